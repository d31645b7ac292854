//! Each store, used the way its documentation recommends for durable writes.

use std::path::Path;
use std::sync::Mutex;

/// What a workload needs from a store. Writes are durable when they return, except where
/// `durability_note` says otherwise.
pub trait Engine: Send + Sync {
    /// One durable put.
    fn put(&self, key: &[u8], value: &[u8]);
    /// Many puts in one durable, atomic batch.
    fn write_batch(&self, entries: &[(Vec<u8>, Vec<u8>)]);
    /// Whether `key` is there (the value is read, not just looked up).
    fn get(&self, key: &[u8]) -> bool;
    /// Reads every entry in key order; returns how many.
    fn scan(&self) -> u64;
    /// The store's own compaction or checkpoint, if it has one, before its size is measured.
    fn settle(&mut self) {}
}

/// The stores, in the order the table lists them.
pub const ENGINES: &[&str] = &[
    "sturdykv",
    "fjall",
    "redb",
    "lmdb",
    "sqlite",
    "sled",
    #[cfg(feature = "rocksdb")]
    "rocksdb",
];

/// How each store was made durable, for the report.
pub fn durability_note(name: &str) -> &'static str {
    match name {
        "sturdykv" => "default (`Durability::Immediate`: `fdatasync` before `Ok`)",
        "fjall" => "`PersistMode::SyncAll` after each write / batch",
        "redb" => "`Durability::Immediate` (the default) on every write transaction",
        "lmdb" => "heed, default flags (the commit `fdatasync`s)",
        "sqlite" => "rusqlite, `journal_mode=WAL`, `synchronous=FULL`",
        "sled" => {
            "`flush()` after each write — uses `sync_file_range`, not `fsync`: NOT comparable"
        }
        "rocksdb" => "`WriteOptions::set_sync(true)`",
        _ => "",
    }
}

pub fn open(name: &str, dir: &Path) -> Box<dyn Engine> {
    match name {
        "sturdykv" => Box::new(Sturdy(sturdykv::Db::open(dir).expect("open sturdykv"))),
        // One process only (`LOCK` held from open to close), as fjall, redb and RocksDB are.
        "sturdykv-exclusive" => Box::new(Sturdy(
            sturdykv::Options::new()
                .exclusive(true)
                .open(dir)
                .expect("open sturdykv"),
        )),
        "fjall" => Box::new(Fjall::open(dir)),
        "redb" => Box::new(Redb::open(dir)),
        "lmdb" => Box::new(Lmdb::open(dir)),
        "sqlite" => Box::new(Sqlite::open(dir)),
        "sled" => Box::new(Sled(sled::open(dir).expect("open sled"))),
        #[cfg(feature = "rocksdb")]
        "rocksdb" => Box::new(Rocks::open(dir)),
        other => panic!("unknown engine {other}"),
    }
}

struct Sturdy(sturdykv::Db);

impl Engine for Sturdy {
    fn put(&self, key: &[u8], value: &[u8]) {
        self.0.put(key, value).expect("put");
    }
    fn write_batch(&self, entries: &[(Vec<u8>, Vec<u8>)]) {
        let mut batch = sturdykv::Batch::new();
        for (k, v) in entries {
            batch.put(k, v);
        }
        self.0.write(batch).expect("write");
    }
    fn get(&self, key: &[u8]) -> bool {
        self.0.get(key).expect("get").is_some()
    }
    fn scan(&self) -> u64 {
        let mut n = 0;
        for entry in self.0.range::<&[u8], _>(..) {
            let (k, v) = entry.expect("scan");
            std::hint::black_box((&k, &v));
            n += 1;
        }
        n
    }
    fn settle(&mut self) {
        self.0.compact().expect("compact");
    }
}

struct Fjall {
    keyspace: fjall::Keyspace,
    partition: fjall::PartitionHandle,
}

impl Fjall {
    fn open(dir: &Path) -> Self {
        let keyspace = fjall::Config::new(dir).open().expect("open fjall");
        let partition = keyspace
            .open_partition("kv", fjall::PartitionCreateOptions::default())
            .expect("partition");
        Fjall {
            keyspace,
            partition,
        }
    }
}

impl Engine for Fjall {
    fn put(&self, key: &[u8], value: &[u8]) {
        self.partition.insert(key, value).expect("insert");
        self.keyspace
            .persist(fjall::PersistMode::SyncAll)
            .expect("persist");
    }
    fn write_batch(&self, entries: &[(Vec<u8>, Vec<u8>)]) {
        let mut batch = self
            .keyspace
            .batch()
            .durability(Some(fjall::PersistMode::SyncAll));
        for (k, v) in entries {
            batch.insert(&self.partition, k.as_slice(), v.as_slice());
        }
        batch.commit().expect("commit");
    }
    fn get(&self, key: &[u8]) -> bool {
        self.partition.get(key).expect("get").is_some()
    }
    fn scan(&self) -> u64 {
        let mut n = 0;
        for entry in self.partition.iter() {
            std::hint::black_box(entry.expect("scan"));
            n += 1;
        }
        n
    }
    fn settle(&mut self) {
        self.partition.major_compact().expect("major compaction");
    }
}

const TABLE: redb::TableDefinition<&[u8], &[u8]> = redb::TableDefinition::new("kv");

struct Redb(redb::Database);

impl Redb {
    fn open(dir: &Path) -> Self {
        std::fs::create_dir_all(dir).expect("mkdir");
        Redb(redb::Database::create(dir.join("redb")).expect("open redb"))
    }
}

impl Engine for Redb {
    fn put(&self, key: &[u8], value: &[u8]) {
        self.write_batch(&[(key.to_vec(), value.to_vec())]);
    }
    fn write_batch(&self, entries: &[(Vec<u8>, Vec<u8>)]) {
        let mut txn = self.0.begin_write().expect("begin");
        txn.set_durability(redb::Durability::Immediate);
        {
            let mut table = txn.open_table(TABLE).expect("table");
            for (k, v) in entries {
                table.insert(k.as_slice(), v.as_slice()).expect("insert");
            }
        }
        txn.commit().expect("commit");
    }
    fn get(&self, key: &[u8]) -> bool {
        let txn = self.0.begin_read().expect("begin read");
        let table = match txn.open_table(TABLE) {
            Ok(table) => table,
            Err(redb::TableError::TableDoesNotExist(_)) => return false,
            Err(e) => panic!("{e}"),
        };
        let found = table.get(key).expect("get");
        found
            .map(|v| std::hint::black_box(v.value().len()))
            .is_some()
    }
    fn scan(&self) -> u64 {
        use redb::ReadableTable;
        let txn = self.0.begin_read().expect("begin read");
        let table = txn.open_table(TABLE).expect("table");
        let mut n = 0;
        for entry in table.iter().expect("iter") {
            let (k, v) = entry.expect("scan");
            std::hint::black_box((k.value().len(), v.value().len()));
            n += 1;
        }
        n
    }
    fn settle(&mut self) {
        self.0.compact().expect("compact");
    }
}

struct Lmdb {
    env: heed::Env,
    db: heed::Database<heed::types::Bytes, heed::types::Bytes>,
}

impl Lmdb {
    fn open(dir: &Path) -> Self {
        std::fs::create_dir_all(dir).expect("mkdir");
        // SAFETY: heed's requirement — this process opens the environment once, and no other
        // process modifies it in a way that breaks LMDB's rules.
        let env = unsafe {
            heed::EnvOpenOptions::new()
                .map_size(16 << 30)
                .max_dbs(1)
                .open(dir)
                .expect("open lmdb")
        };
        let mut txn = env.write_txn().expect("txn");
        let db = env.create_database(&mut txn, Some("kv")).expect("db");
        txn.commit().expect("commit");
        Lmdb { env, db }
    }
}

impl Engine for Lmdb {
    fn put(&self, key: &[u8], value: &[u8]) {
        let mut txn = self.env.write_txn().expect("txn");
        self.db.put(&mut txn, key, value).expect("put");
        txn.commit().expect("commit");
    }
    fn write_batch(&self, entries: &[(Vec<u8>, Vec<u8>)]) {
        let mut txn = self.env.write_txn().expect("txn");
        for (k, v) in entries {
            self.db.put(&mut txn, k, v).expect("put");
        }
        txn.commit().expect("commit");
    }
    fn get(&self, key: &[u8]) -> bool {
        let txn = self.env.read_txn().expect("txn");
        let found = self.db.get(&txn, key).expect("get");
        found.map(|v| std::hint::black_box(v.len())).is_some()
    }
    fn scan(&self) -> u64 {
        let txn = self.env.read_txn().expect("txn");
        let mut n = 0;
        for entry in self.db.iter(&txn).expect("iter") {
            std::hint::black_box(entry.expect("scan"));
            n += 1;
        }
        n
    }
}

/// One connection per thread at a time, as SQLite wants.
struct Sqlite {
    path: std::path::PathBuf,
    pool: Mutex<Vec<rusqlite::Connection>>,
}

impl Sqlite {
    fn open(dir: &Path) -> Self {
        std::fs::create_dir_all(dir).expect("mkdir");
        let sqlite = Sqlite {
            path: dir.join("db.sqlite"),
            pool: Mutex::new(Vec::new()),
        };
        sqlite.with(|c| {
            c.execute_batch(
                "CREATE TABLE IF NOT EXISTS kv (k BLOB PRIMARY KEY, v BLOB NOT NULL) WITHOUT ROWID",
            )
            .expect("create table");
        });
        sqlite
    }

    fn with<T>(&self, f: impl FnOnce(&mut rusqlite::Connection) -> T) -> T {
        let taken = self.pool.lock().expect("pool").pop();
        let mut conn = taken.unwrap_or_else(|| {
            let c = rusqlite::Connection::open(&self.path).expect("open sqlite");
            c.execute_batch(
                "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; PRAGMA busy_timeout=60000;",
            )
            .expect("pragmas");
            c
        });
        let out = f(&mut conn);
        self.pool.lock().expect("pool").push(conn);
        out
    }
}

impl Engine for Sqlite {
    fn put(&self, key: &[u8], value: &[u8]) {
        self.with(|c| {
            c.prepare_cached("INSERT OR REPLACE INTO kv (k, v) VALUES (?1, ?2)")
                .expect("prepare")
                .execute((key, value))
                .expect("insert");
        });
    }
    fn write_batch(&self, entries: &[(Vec<u8>, Vec<u8>)]) {
        self.with(|c| {
            let txn = c
                .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
                .expect("begin");
            {
                let mut stmt = txn
                    .prepare_cached("INSERT OR REPLACE INTO kv (k, v) VALUES (?1, ?2)")
                    .expect("prepare");
                for (k, v) in entries {
                    stmt.execute((k, v)).expect("insert");
                }
            }
            txn.commit().expect("commit");
        });
    }
    fn get(&self, key: &[u8]) -> bool {
        self.with(|c| {
            let mut stmt = c
                .prepare_cached("SELECT v FROM kv WHERE k = ?1")
                .expect("prepare");
            let mut rows = stmt.query([key]).expect("query");
            match rows.next().expect("row") {
                Some(row) => {
                    let v = row.get_ref(0).expect("v").as_blob().expect("blob");
                    std::hint::black_box(v.len());
                    true
                }
                None => false,
            }
        })
    }
    fn scan(&self) -> u64 {
        self.with(|c| {
            let mut stmt = c
                .prepare("SELECT k, v FROM kv ORDER BY k")
                .expect("prepare");
            let mut rows = stmt.query([]).expect("query");
            let mut n = 0;
            while let Some(row) = rows.next().expect("row") {
                let k = row.get_ref(0).expect("k").as_blob().expect("blob").len();
                let v = row.get_ref(1).expect("v").as_blob().expect("blob").len();
                std::hint::black_box((k, v));
                n += 1;
            }
            n
        })
    }
    fn settle(&mut self) {
        self.with(|c| {
            c.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);")
                .expect("checkpoint")
        });
    }
}

struct Sled(sled::Db);

impl Engine for Sled {
    fn put(&self, key: &[u8], value: &[u8]) {
        self.0.insert(key, value).expect("insert");
        self.0.flush().expect("flush");
    }
    fn write_batch(&self, entries: &[(Vec<u8>, Vec<u8>)]) {
        let mut batch = sled::Batch::default();
        for (k, v) in entries {
            batch.insert(k.as_slice(), v.as_slice());
        }
        self.0.apply_batch(batch).expect("batch");
        self.0.flush().expect("flush");
    }
    fn get(&self, key: &[u8]) -> bool {
        self.0
            .get(key)
            .expect("get")
            .map(|v| std::hint::black_box(v.len()))
            .is_some()
    }
    fn scan(&self) -> u64 {
        let mut n = 0;
        for entry in self.0.iter() {
            std::hint::black_box(entry.expect("scan"));
            n += 1;
        }
        n
    }
}

#[cfg(feature = "rocksdb")]
struct Rocks {
    db: rocksdb::DB,
    sync: rocksdb::WriteOptions,
}

#[cfg(feature = "rocksdb")]
impl Rocks {
    fn open(dir: &Path) -> Self {
        let mut options = rocksdb::Options::default();
        options.create_if_missing(true);
        let mut sync = rocksdb::WriteOptions::default();
        sync.set_sync(true);
        Rocks {
            db: rocksdb::DB::open(&options, dir).expect("open rocksdb"),
            sync,
        }
    }
}

#[cfg(feature = "rocksdb")]
impl Engine for Rocks {
    fn put(&self, key: &[u8], value: &[u8]) {
        self.db.put_opt(key, value, &self.sync).expect("put");
    }
    fn write_batch(&self, entries: &[(Vec<u8>, Vec<u8>)]) {
        let mut batch = rocksdb::WriteBatch::default();
        for (k, v) in entries {
            batch.put(k, v);
        }
        self.db.write_opt(batch, &self.sync).expect("write");
    }
    fn get(&self, key: &[u8]) -> bool {
        self.db
            .get_pinned(key)
            .expect("get")
            .map(|v| std::hint::black_box(v.len()))
            .is_some()
    }
    fn scan(&self) -> u64 {
        let mut n = 0;
        for entry in self.db.iterator(rocksdb::IteratorMode::Start) {
            std::hint::black_box(entry.expect("scan"));
            n += 1;
        }
        n
    }
    fn settle(&mut self) {
        self.db.compact_range::<&[u8], &[u8]>(None, None);
    }
}
