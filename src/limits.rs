//! Size limits, checked before anything is written.

/// The largest key accepted: 64 KiB.
pub const MAX_KEY_LEN: usize = 64 * 1024;
/// The largest value accepted: 1 GiB.
pub const MAX_VALUE_LEN: usize = 1024 * 1024 * 1024;
/// The largest encoded batch accepted: 2 GiB (a log record's length field is a `u32`).
pub const MAX_BATCH_BYTES: u64 = 2 * 1024 * 1024 * 1024;
