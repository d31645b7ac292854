//! The write-ahead log's byte layout (docs/FORMAT.md, "Write-ahead log file").
//!
//! ```text
//! WAL file header (40 bytes)
//!   0  magic            8  "SKVLOG\r\n"
//!   8  format version   4  u32 = 2 (1: records without the durable horizon)
//!  12  flags            4  u32 = 0 (reserved)
//!  16  generation       8  u64
//!  24  first sequence   8  u64: sequence number of the first record in this file
//!  32  header crc       4  u32: CRC-32 (IEEE, as crc32fast computes it) of bytes 0..32
//!  36  reserved         4  zero
//!
//! WAL record (one per committed batch), starting right after the header
//!   0  body length      4  u32 = N (0 means "end of log": the preallocated zero region)
//!   4  body crc         4  u32: CRC-32 of the N body bytes
//!   8  body             N  sequence u64, durable horizon u64 (version 2 only), op count u32, ops
//! op: tag u8 (1 put, 2 delete), key length u32, key, and for a put: value length u32, value
//! ```

use super::{HeaderError, read_u32, read_u64};
use crate::limits::{MAX_BATCH_BYTES, MAX_KEY_LEN, MAX_VALUE_LEN};

/// First eight bytes of every write-ahead log file.
pub const WAL_MAGIC: [u8; 8] = *b"SKVLOG\r\n";

/// The log format this build writes: the records of version 2 (each carries the durable horizon:
/// every record with a lower sequence number was durable when the record was appended), in a
/// segment of a store of format 2, whose live set a manifest names. Builds that know only version
/// 2 refuse it, so that they cannot misread a converted store.
pub const LOG_FORMAT_VERSION: u32 = 3;
/// The log format of stores of format 1 whose records carry the durable horizon; read, and
/// converted by a writable open.
#[cfg(any(test, feature = "__testing"))]
pub const LOG_FORMAT_V2: u32 = 2;
/// The first log format, whose records carry no durable horizon. Read, and appended to in its own
/// format until the next compaction starts a log of the current version.
pub const LOG_FORMAT_V1: u32 = 1;

/// Header field offsets, each defined from the previous one.
const MAGIC_AT: usize = 0;
const VERSION_AT: usize = MAGIC_AT + 8;
const FLAGS_AT: usize = VERSION_AT + 4;
const GENERATION_AT: usize = FLAGS_AT + 4;
const FIRST_SEQ_AT: usize = GENERATION_AT + 8;
const HEADER_CRC_AT: usize = FIRST_SEQ_AT + 8;
const HEADER_RESERVED_AT: usize = HEADER_CRC_AT + 4;
/// Length of the WAL header; the first record starts here.
pub const WAL_HEADER_LEN: usize = HEADER_RESERVED_AT + 4;

/// Length of a record's framing: body length and body CRC.
pub const RECORD_PREFIX_LEN: usize = 8;
/// Bytes of a version 1 body before its ops: sequence number and op count.
const BODY_FIXED_LEN_V1: usize = 8 + 4;
/// Bytes of a version 2 body before its ops: sequence number, durable horizon and op count.
const BODY_FIXED_LEN_V2: usize = 8 + 8 + 4;

/// Bytes of a body before its ops, in the log format `version`.
fn body_fixed_len(version: u32) -> usize {
    if version == LOG_FORMAT_V1 {
        BODY_FIXED_LEN_V1
    } else {
        BODY_FIXED_LEN_V2
    }
}
const OP_PUT: u8 = 1;
const OP_DELETE: u8 = 2;
/// Bytes an op takes beyond its key and value.
pub const PUT_OVERHEAD: usize = 1 + 4 + 4;
/// Bytes a delete takes beyond its key.
pub const DELETE_OVERHEAD: usize = 1 + 4;
/// The largest body a valid record can have; a longer claimed length is corruption.
pub const MAX_BODY_LEN: u64 = BODY_FIXED_LEN_V2 as u64 + MAX_BATCH_BYTES;

/// The fixed part of a write-ahead log file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WalHeader {
    /// The log format of the file's records ([`LOG_FORMAT_VERSION`] for every log this build
    /// creates).
    pub version: u32,
    /// The generation this log belongs to (`wal-<generation>`).
    pub generation: u64,
    /// Sequence number the first record of this file must carry.
    pub first_seq: u64,
}

impl WalHeader {
    /// The header's exact bytes.
    pub fn encode(&self) -> [u8; WAL_HEADER_LEN] {
        let mut out = [0u8; WAL_HEADER_LEN];
        out[MAGIC_AT..VERSION_AT].copy_from_slice(&WAL_MAGIC);
        out[VERSION_AT..FLAGS_AT].copy_from_slice(&self.version.to_le_bytes());
        out[GENERATION_AT..FIRST_SEQ_AT].copy_from_slice(&self.generation.to_le_bytes());
        out[FIRST_SEQ_AT..HEADER_CRC_AT].copy_from_slice(&self.first_seq.to_le_bytes());
        let crc = crc32fast::hash(&out[..HEADER_CRC_AT]);
        out[HEADER_CRC_AT..HEADER_RESERVED_AT].copy_from_slice(&crc.to_le_bytes());
        out
    }

    /// Decodes a header, checking magic, then version, then checksum, so that a file from a newer
    /// build is reported as such rather than as corrupt.
    pub fn decode(bytes: &[u8]) -> Result<Self, HeaderError> {
        if bytes.len() < WAL_HEADER_LEN || bytes[MAGIC_AT..VERSION_AT] != WAL_MAGIC {
            return Err(HeaderError::NotOurs);
        }
        let version = read_u32(bytes, VERSION_AT);
        if version > LOG_FORMAT_VERSION {
            return Err(HeaderError::FutureVersion {
                found: version,
                supported: LOG_FORMAT_VERSION,
            });
        }
        let stored_crc = read_u32(bytes, HEADER_CRC_AT);
        if crc32fast::hash(&bytes[..HEADER_CRC_AT]) != stored_crc {
            return Err(HeaderError::Corrupt {
                offset: HEADER_CRC_AT as u64,
                reason: "header checksum mismatch",
            });
        }
        if version == 0
            || read_u32(bytes, FLAGS_AT) != 0
            || read_u32(bytes, HEADER_RESERVED_AT) != 0
        {
            return Err(HeaderError::Corrupt {
                offset: VERSION_AT as u64,
                reason: "invalid version, flags or reserved bytes",
            });
        }
        Ok(WalHeader {
            version,
            generation: read_u64(bytes, GENERATION_AT),
            first_seq: read_u64(bytes, FIRST_SEQ_AT),
        })
    }
}

/// One operation of a batch, borrowed from wherever it is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpRef<'a> {
    /// Set `key` to `value`.
    Put(&'a [u8], &'a [u8]),
    /// Remove `key`.
    Delete(&'a [u8]),
}

impl OpRef<'_> {
    /// Bytes this op takes inside a record body.
    pub fn encoded_len(&self) -> usize {
        match self {
            OpRef::Put(k, v) => PUT_OVERHEAD + k.len() + v.len(),
            OpRef::Delete(k) => DELETE_OVERHEAD + k.len(),
        }
    }
}

/// Appends one complete record (framing and body) in the log format `version` to `out`.
/// `durable_below` (at most `seq`; version 2 only) is the durable horizon: every record with a
/// lower sequence number is durable. `ops_len` must be the sum of the ops' `encoded_len`, which
/// the caller has already checked against the limits.
pub fn encode_record<'a>(
    out: &mut Vec<u8>,
    version: u32,
    seq: u64,
    durable_below: u64,
    ops: impl ExactSizeIterator<Item = OpRef<'a>>,
    ops_len: usize,
) {
    debug_assert!(durable_below <= seq, "a record cannot vouch for itself");
    let body_len = body_fixed_len(version) + ops_len;
    let start = out.len();
    out.reserve(RECORD_PREFIX_LEN + body_len);
    out.extend_from_slice(&u32::try_from(body_len).unwrap_or(u32::MAX).to_le_bytes());
    out.extend_from_slice(&[0; 4]); // CRC, filled in below
    out.extend_from_slice(&seq.to_le_bytes());
    if version != LOG_FORMAT_V1 {
        out.extend_from_slice(&durable_below.to_le_bytes());
    }
    out.extend_from_slice(&u32::try_from(ops.len()).unwrap_or(u32::MAX).to_le_bytes());
    for op in ops {
        match op {
            OpRef::Put(key, value) => {
                out.push(OP_PUT);
                out.extend_from_slice(&(key.len() as u32).to_le_bytes());
                out.extend_from_slice(key);
                out.extend_from_slice(&(value.len() as u32).to_le_bytes());
                out.extend_from_slice(value);
            }
            OpRef::Delete(key) => {
                out.push(OP_DELETE);
                out.extend_from_slice(&(key.len() as u32).to_le_bytes());
                out.extend_from_slice(key);
            }
        }
    }
    let body = start + RECORD_PREFIX_LEN;
    debug_assert_eq!(out.len() - body, body_len, "ops_len disagrees with the ops");
    let crc = crc32fast::hash(&out[body..]);
    out[start + 4..body].copy_from_slice(&crc.to_le_bytes());
}

/// What lies at some offset of a log, as far as the bytes given can tell.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame<'a> {
    /// A complete record whose checksum and structure are valid.
    Record(Record<'a>),
    /// A zero length field: the end of the log (the preallocated, never-written region).
    End,
    /// The record claims more bytes than `buf` holds. If `buf` reaches the end of the file, the
    /// record is torn; otherwise the caller should read `needed` bytes and ask again.
    Incomplete {
        /// Total bytes (framing included) the record claims.
        needed: u64,
    },
    /// Not a valid record: a failed checksum, an impossible length or a malformed body.
    Invalid(&'static str),
}

/// A decoded, verified record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Record<'a> {
    /// The record's sequence number.
    pub seq: u64,
    /// The durable horizon when the record was appended: every record with a lower sequence
    /// number was durable then, so was acknowledged or could have been. 0 in version 1 logs,
    /// which do not record it. At most `seq`.
    pub durable_below: u64,
    /// Number of ops in the batch.
    pub op_count: u32,
    /// The encoded ops (already validated; iterate with [`Record::ops`]).
    ops: &'a [u8],
    /// Bytes the record takes in the file, framing included.
    pub len: u64,
}

impl<'a> Record<'a> {
    /// The batch's operations in the order they were written.
    pub fn ops(&self) -> impl Iterator<Item = OpRef<'a>> + use<'a> {
        let mut rest = self.ops;
        (0..self.op_count).map(move |_| {
            let (op, tail) = split_op(rest).unwrap_or((OpRef::Delete(&[]), &[]));
            rest = tail;
            op
        })
    }
}

/// Decodes the record at the start of `buf`, in the log format `version`.
pub fn decode_frame(buf: &[u8], version: u32) -> Frame<'_> {
    if buf.len() < 4 {
        return if buf.iter().all(|&b| b == 0) && !buf.is_empty() {
            Frame::End
        } else {
            Frame::Incomplete {
                needed: RECORD_PREFIX_LEN as u64,
            }
        };
    }
    let body_len = u64::from(read_u32(buf, 0));
    if body_len == 0 {
        return Frame::End;
    }
    let fixed = body_fixed_len(version);
    if body_len < fixed as u64 || body_len > MAX_BODY_LEN {
        return Frame::Invalid("impossible record length");
    }
    let total = RECORD_PREFIX_LEN as u64 + body_len;
    if (buf.len() as u64) < total {
        return Frame::Incomplete { needed: total };
    }
    let body = &buf[RECORD_PREFIX_LEN..total as usize];
    if crc32fast::hash(body) != read_u32(buf, 4) {
        return Frame::Invalid("record checksum mismatch");
    }
    let seq = read_u64(body, 0);
    let (durable_below, op_count) = if version == LOG_FORMAT_V1 {
        (0, read_u32(body, 8))
    } else {
        (read_u64(body, 8), read_u32(body, 16))
    };
    if durable_below > seq {
        // Written by a bug or crafted: a record can only vouch for the records before it.
        return Frame::Invalid("durable horizon beyond the record's own sequence number");
    }
    let ops = &body[fixed..];
    // A record that passes its CRC but does not parse was written by a bug or crafted: never apply
    // part of it.
    let mut rest = ops;
    for _ in 0..op_count {
        match split_op(rest) {
            Some((_, tail)) => rest = tail,
            None => return Frame::Invalid("malformed operation in record body"),
        }
    }
    if !rest.is_empty() {
        return Frame::Invalid("trailing bytes after the last operation");
    }
    Frame::Record(Record {
        seq,
        durable_below,
        op_count,
        ops,
        len: total,
    })
}

/// The keys of the operations that still parse in the bytes of a damaged record, `bytes`
/// starting at its framing (its checksum is not checked: this names what a salvage lost, and a
/// key that only looks like one is better shown than hidden).
pub fn keys_in_damaged_record(bytes: &[u8], version: u32) -> Vec<&[u8]> {
    let mut rest = bytes
        .get(RECORD_PREFIX_LEN + body_fixed_len(version)..)
        .unwrap_or(&[]);
    let mut keys = Vec::new();
    while let Some((op, tail)) = split_op(rest) {
        keys.push(match op {
            OpRef::Put(key, _) | OpRef::Delete(key) => key,
        });
        rest = tail;
    }
    keys
}

/// Splits the first op off `buf`, checking lengths and limits.
fn split_op(buf: &[u8]) -> Option<(OpRef<'_>, &[u8])> {
    let (&tag, rest) = buf.split_first()?;
    let (key, rest) = split_len_prefixed(rest, MAX_KEY_LEN)?;
    match tag {
        OP_PUT => {
            let (value, rest) = split_len_prefixed(rest, MAX_VALUE_LEN)?;
            Some((OpRef::Put(key, value), rest))
        }
        OP_DELETE => Some((OpRef::Delete(key), rest)),
        _ => None,
    }
}

fn split_len_prefixed(buf: &[u8], max: usize) -> Option<(&[u8], &[u8])> {
    let len = usize::try_from(u32::from_le_bytes(buf.get(..4)?.try_into().ok()?)).ok()?;
    if len > max {
        return None;
    }
    let rest = &buf[4..];
    (rest.len() >= len).then(|| rest.split_at(len))
}

/// The smallest number of bytes a valid record can take (an empty batch of version 1).
pub const MIN_RECORD_LEN: u64 = (RECORD_PREFIX_LEN + BODY_FIXED_LEN_V1) as u64;

#[cfg(test)]
mod tests {
    use super::*;

    fn record_in(version: u32, seq: u64, durable_below: u64, ops: &[OpRef<'_>]) -> Vec<u8> {
        let mut out = Vec::new();
        let len = ops.iter().map(OpRef::encoded_len).sum();
        encode_record(
            &mut out,
            version,
            seq,
            durable_below,
            ops.iter().copied(),
            len,
        );
        out
    }

    /// A record of the current format, vouching for everything before it.
    fn record(seq: u64, ops: &[OpRef<'_>]) -> Vec<u8> {
        record_in(LOG_FORMAT_VERSION, seq, seq, ops)
    }

    fn decode(bytes: &[u8]) -> Frame<'_> {
        decode_frame(bytes, LOG_FORMAT_VERSION)
    }

    /// Pins the WAL header of every version byte for byte; if this fails, the format changed:
    /// bump `LOG_FORMAT_VERSION` and update docs/FORMAT.md.
    #[test]
    fn golden_wal_header() {
        for (version, crc) in [
            (LOG_FORMAT_V1, [0x7b, 0x5d, 0x93, 0x38]),
            (LOG_FORMAT_V2, [0x53, 0xf4, 0x8d, 0x60]),
            (LOG_FORMAT_VERSION, [0x74, 0x91, 0xa8, 0xe1]),
        ] {
            let header = WalHeader {
                version,
                generation: 0x0102,
                first_seq: 7,
            };
            let bytes = header.encode();
            let mut expected: [u8; 40] = [
                b'S',
                b'K',
                b'V',
                b'L',
                b'O',
                b'G',
                b'\r',
                b'\n', // magic
                version as u8,
                0,
                0,
                0, // version
                0,
                0,
                0,
                0, // flags
                0x02,
                0x01,
                0,
                0,
                0,
                0,
                0,
                0, // generation
                7,
                0,
                0,
                0,
                0,
                0,
                0,
                0, // first sequence
                0,
                0,
                0,
                0, // crc32 of bytes 0..32, below
                0,
                0,
                0,
                0, // reserved
            ];
            expected[32..36].copy_from_slice(&crc);
            assert_eq!(bytes, expected, "version {version}");
            assert_eq!(
                crc32fast::hash(&bytes[..32]).to_le_bytes(),
                crc,
                "version {version}"
            );
            assert_eq!(WalHeader::decode(&bytes), Ok(header));
        }
    }

    /// Pins a version 2 record with one put and one delete byte for byte.
    #[test]
    fn golden_record() {
        let bytes = record_in(
            LOG_FORMAT_VERSION,
            5,
            3,
            &[OpRef::Put(b"k1", b"v"), OpRef::Delete(b"k2")],
        );
        let mut expected = vec![
            39, 0, 0, 0, // body length: 8 seq + 8 horizon + 4 count + 12 put + 7 delete
            0, 0, 0, 0, // crc placeholder, checked below
            5, 0, 0, 0, 0, 0, 0, 0, // sequence
            3, 0, 0, 0, 0, 0, 0, 0, // durable horizon: records below 3 were durable
            2, 0, 0, 0, // op count
            1, 2, 0, 0, 0, b'k', b'1', 1, 0, 0, 0, b'v', // put k1 = v
            2, 2, 0, 0, 0, b'k', b'2', // delete k2
        ];
        assert_eq!(expected.len() - RECORD_PREFIX_LEN, 39);
        let crc = crc32fast::hash(&expected[RECORD_PREFIX_LEN..]);
        expected[4..8].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(bytes, expected);
        assert_eq!(&bytes[4..8], &GOLDEN_V2_CRC);
        match decode(&bytes) {
            Frame::Record(r) => {
                assert_eq!((r.seq, r.durable_below), (5, 3));
                assert_eq!(r.len, bytes.len() as u64);
                let ops: Vec<_> = r.ops().collect();
                assert_eq!(ops, [OpRef::Put(b"k1", b"v"), OpRef::Delete(b"k2")]);
            }
            other => panic!("expected a record, got {other:?}"),
        }
    }

    /// The CRC of [`golden_record`]'s body, as docs/FORMAT.md shows it.
    const GOLDEN_V2_CRC: [u8; 4] = [0xf5, 0xd1, 0xbf, 0x7f];

    /// Pins a version 1 record (no durable horizon) byte for byte: logs of that version keep
    /// being read, and appended to, as they are.
    #[test]
    fn golden_record_v1() {
        let bytes = record_in(
            LOG_FORMAT_V1,
            5,
            0,
            &[OpRef::Put(b"k1", b"v"), OpRef::Delete(b"k2")],
        );
        let mut expected = vec![
            31, 0, 0, 0, // body length: 8 seq + 4 count + 12 put + 7 delete
            0, 0, 0, 0, // crc placeholder, checked below
            5, 0, 0, 0, 0, 0, 0, 0, // sequence
            2, 0, 0, 0, // op count
            1, 2, 0, 0, 0, b'k', b'1', 1, 0, 0, 0, b'v', // put k1 = v
            2, 2, 0, 0, 0, b'k', b'2', // delete k2
        ];
        assert_eq!(expected.len() - RECORD_PREFIX_LEN, 31);
        let crc = crc32fast::hash(&expected[RECORD_PREFIX_LEN..]);
        expected[4..8].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(bytes, expected);
        assert_eq!(&bytes[4..8], &[0xcf, 0xd8, 0xc8, 0x1f]);
        match decode_frame(&bytes, LOG_FORMAT_V1) {
            Frame::Record(r) => {
                assert_eq!((r.seq, r.durable_below), (5, 0));
                assert_eq!(r.len, bytes.len() as u64);
                let ops: Vec<_> = r.ops().collect();
                assert_eq!(ops, [OpRef::Put(b"k1", b"v"), OpRef::Delete(b"k2")]);
            }
            other => panic!("expected a record, got {other:?}"),
        }
    }

    #[test]
    fn header_errors_are_told_apart() {
        let good = WalHeader {
            version: LOG_FORMAT_VERSION,
            generation: 1,
            first_seq: 1,
        }
        .encode();
        assert_eq!(WalHeader::decode(&good[..10]), Err(HeaderError::NotOurs));
        assert_eq!(
            WalHeader::decode(b"hello, this is a text file ........!!!"),
            Err(HeaderError::NotOurs)
        );

        let mut future = good;
        future[VERSION_AT] = 4;
        assert_eq!(
            WalHeader::decode(&future),
            Err(HeaderError::FutureVersion {
                found: 4,
                supported: LOG_FORMAT_VERSION
            })
        );

        let mut flipped = good;
        flipped[GENERATION_AT] ^= 0x10;
        assert!(matches!(
            WalHeader::decode(&flipped),
            Err(HeaderError::Corrupt { .. })
        ));
    }

    #[test]
    fn zeros_are_the_end_of_the_log() {
        assert_eq!(decode(&[0u8; 64]), Frame::End);
        assert_eq!(decode(&[0u8; 2]), Frame::End);
    }

    #[test]
    fn every_truncation_is_incomplete_never_a_record() {
        let bytes = record(9, &[OpRef::Put(b"key", b"value")]);
        for cut in 1..bytes.len() {
            match decode(&bytes[..cut]) {
                Frame::Incomplete { needed } => assert!(needed as usize > cut),
                other => panic!("cut at {cut}: {other:?}"),
            }
        }
    }

    #[test]
    fn every_flipped_bit_is_detected() {
        let bytes = record(9, &[OpRef::Put(b"key", b"value"), OpRef::Delete(b"gone")]);
        for bit in 0..bytes.len() * 8 {
            let mut damaged = bytes.clone();
            damaged[bit / 8] ^= 1 << (bit % 8);
            assert!(
                !matches!(decode(&damaged), Frame::Record(_)),
                "bit {bit} flipped went unnoticed"
            );
        }
    }

    #[test]
    fn a_huge_claimed_length_is_invalid_not_an_allocation() {
        let mut bytes = record(1, &[OpRef::Put(b"a", b"b")]);
        bytes[0..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(decode(&bytes), Frame::Invalid("impossible record length"));
    }

    fn framed(body: &[u8]) -> Vec<u8> {
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&(body.len() as u32).to_le_bytes());
        bytes.extend_from_slice(&crc32fast::hash(body).to_le_bytes());
        bytes.extend_from_slice(body);
        bytes
    }

    #[test]
    fn a_valid_crc_over_a_malformed_body_is_rejected() {
        // Body: seq, horizon, count = 1, then an unknown op tag.
        let mut body = Vec::new();
        body.extend_from_slice(&1u64.to_le_bytes());
        body.extend_from_slice(&1u64.to_le_bytes());
        body.extend_from_slice(&1u32.to_le_bytes());
        body.extend_from_slice(&[9, 0, 0, 0, 0]);
        assert_eq!(
            decode(&framed(&body)),
            Frame::Invalid("malformed operation in record body")
        );
    }

    /// A record can vouch only for the records before it: a horizon beyond its own sequence
    /// number (a bug, or a crafted file) would make recovery refuse to cut a torn tail.
    #[test]
    fn a_horizon_beyond_the_record_is_rejected() {
        let mut body = Vec::new();
        body.extend_from_slice(&5u64.to_le_bytes());
        body.extend_from_slice(&6u64.to_le_bytes());
        body.extend_from_slice(&0u32.to_le_bytes());
        assert_eq!(
            decode(&framed(&body)),
            Frame::Invalid("durable horizon beyond the record's own sequence number")
        );
        let at_itself = record_in(LOG_FORMAT_VERSION, 5, 5, &[]);
        assert!(matches!(decode(&at_itself), Frame::Record(r) if r.durable_below == 5));
    }

    /// The same bytes mean different records in the two versions; each decodes as its own.
    #[test]
    fn each_version_decodes_its_own_records() {
        let ops = [OpRef::Put(b"key", b"value")];
        let v1 = record_in(LOG_FORMAT_V1, 9, 0, &ops);
        let v2 = record_in(LOG_FORMAT_VERSION, 9, 4, &ops);
        assert!(matches!(decode_frame(&v1, LOG_FORMAT_V1), Frame::Record(r) if r.seq == 9));
        assert!(matches!(decode_frame(&v2, LOG_FORMAT_VERSION), Frame::Record(r) if r.seq == 9));
        assert!(!matches!(
            decode_frame(&v1, LOG_FORMAT_VERSION),
            Frame::Record(_)
        ));
        assert!(!matches!(
            decode_frame(&v2, LOG_FORMAT_V1),
            Frame::Record(_)
        ));
    }
}

#[cfg(test)]
mod roundtrip_tests {
    use super::*;
    use crate::testing::fuzz::check_decode_roundtrip;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..256)) {
            check_decode_roundtrip(&data);
        }

        #[test]
        fn encoded_batches_decode_to_themselves(
            seq in any::<u64>(),
            behind in any::<u64>(),
            ops in proptest::collection::vec(
                (proptest::collection::vec(any::<u8>(), 0..20),
                 proptest::option::of(proptest::collection::vec(any::<u8>(), 0..40))),
                0..8),
        ) {
            let refs: Vec<OpRef<'_>> = ops
                .iter()
                .map(|(k, v)| match v {
                    Some(v) => OpRef::Put(k, v),
                    None => OpRef::Delete(k),
                })
                .collect();
            let mut bytes = Vec::new();
            let len = refs.iter().map(OpRef::encoded_len).sum();
            let durable_below = seq.saturating_sub(behind);
            encode_record(&mut bytes, LOG_FORMAT_VERSION, seq, durable_below, refs.iter().copied(), len);
            match decode_frame(&bytes, LOG_FORMAT_VERSION) {
                Frame::Record(r) => {
                    prop_assert_eq!(r.seq, seq);
                    prop_assert_eq!(r.durable_below, durable_below);
                    prop_assert_eq!(r.ops().collect::<Vec<_>>(), refs);
                }
                other => prop_assert!(false, "{:?}", other),
            }
            check_decode_roundtrip(&bytes);
        }
    }
}
