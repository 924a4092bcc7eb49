//! The embedded store as its users rely on it: the store contract, durability across restarts
//! and crashes (a real `kill -9` included), recovery from a torn write, refusal of damage, and
//! one process per data directory.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{mpsc, Mutex};
use std::time::{Duration, Instant};

use pylon_model::{Key, Kind};
use pylon_store::{
    ConfigStore, EmbeddedError, EmbeddedOptions, EmbeddedStore, Precondition, StoreError, Txn,
};
use serde_json::json;

fn key(id: &str) -> Key {
    Key::new(Kind::Routes, id)
}

/// Held while the kill -9 test starts a child. Until the child execs, it holds copies of this
/// process's descriptors, the locks of other tests' data directories included: a test that
/// closed a store and opened it again then could find it still locked.
static SPAWNING: Mutex<()> = Mutex::new(());

fn try_open(dir: &Path) -> Result<EmbeddedStore, EmbeddedError> {
    try_open_with(dir, EmbeddedOptions::default())
}

fn try_open_with(dir: &Path, options: EmbeddedOptions) -> Result<EmbeddedStore, EmbeddedError> {
    let _no_child_starting = SPAWNING.lock().unwrap_or_else(|e| e.into_inner());
    EmbeddedStore::open_with(dir, options)
}

fn open(dir: &Path) -> EmbeddedStore {
    try_open(dir).unwrap()
}

fn compacting_every(dir: &Path, records: usize) -> EmbeddedStore {
    let options = EmbeddedOptions {
        compact_after_records: records,
        ..EmbeddedOptions::default()
    };
    try_open_with(dir, options).unwrap()
}

fn wal_len(dir: &Path) -> u64 {
    std::fs::metadata(dir.join("wal.log")).unwrap().len()
}

#[tokio::test]
async fn transactions_follow_the_store_contract() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let mut watch = store.watch(0).await.unwrap();

    let r1 = store
        .commit(Txn::put(key("a"), json!({"v": 1})).when(key("a"), Precondition::Absent))
        .await
        .unwrap();
    assert_eq!(r1, 1);
    let taken = Txn::put(key("a"), json!({"v": 9})).when(key("a"), Precondition::Absent);
    assert_eq!(store.commit(taken).await, Err(StoreError::Conflict));

    let stale = Txn::put(key("a"), json!({"v": 2})).when(key("a"), Precondition::ModRevision(0));
    assert_eq!(store.commit(stale).await, Err(StoreError::Conflict));
    let r2 = store
        .commit(Txn::put(key("a"), json!({"v": 2})).when(key("a"), Precondition::ModRevision(r1)))
        .await
        .unwrap();
    let a = store.get(&key("a")).await.unwrap().unwrap();
    assert_eq!(
        (a.value, a.create_revision, a.mod_revision),
        (json!({"v": 2}), r1, r2)
    );

    assert_eq!(
        store.commit(Txn::put(key("a"), json!({"v": 2}))).await,
        Ok(r2),
        "a no-op keeps the revision"
    );
    assert_eq!(
        store
            .commit(Txn::delete(key("b")).unchanged_since(r1))
            .await,
        Err(StoreError::Conflict),
        "a change after the writer's revision"
    );
    let both = Txn {
        writes: vec![(key("a"), None), (key("b"), Some(json!({})))],
        ..Txn::default()
    }
    .unchanged_since(r2);
    let r3 = store.commit(both).await.unwrap();
    assert_eq!(r3, r2 + 1);
    let listing = store.list().await.unwrap();
    assert_eq!(listing.revision, r3);
    assert_eq!(listing.entries.len(), 1);
    assert_eq!(store.get(&key("a")).await.unwrap(), None);

    let seen: Vec<_> = (0..3)
        .map(|_| watch.try_recv().unwrap().unwrap().revision)
        .collect();
    assert_eq!(
        seen,
        [r1, r2, r3],
        "each change once, refusals and no-ops never"
    );
    let last = watch.try_recv().ok();
    assert!(last.is_none(), "{last:?}");
}

#[tokio::test]
async fn a_reopened_store_has_the_same_entries_and_continues_the_revisions() {
    for compaction in [None, Some(3)] {
        let dir = tempfile::tempdir().unwrap();
        let reopen = || match compaction {
            Some(records) => compacting_every(dir.path(), records),
            None => open(dir.path()),
        };
        let store = reopen();
        store.commit(Txn::put(key("kept"), json!(0))).await.unwrap();
        for i in 1..=7 {
            store.commit(Txn::put(key("kept"), json!(i))).await.unwrap();
            store
                .commit(Txn::put(key(&format!("r{i}")), json!(i)))
                .await
                .unwrap();
        }
        store.commit(Txn::delete(key("r7"))).await.unwrap();
        let before = store.list().await.unwrap();
        drop(store);

        let store = reopen();
        let after = store.list().await.unwrap();
        assert_eq!(after, before, "compaction: {compaction:?}");
        let kept = store.get(&key("kept")).await.unwrap().unwrap();
        assert_eq!((kept.create_revision, kept.value), (1, json!(7)));

        // Watching resumes from the recovered revision (and from earlier ones the log still
        // holds); the next change takes the next revision.
        let mut watch = store.watch(before.revision).await.unwrap();
        let next = store.commit(Txn::delete(key("r1"))).await.unwrap();
        assert_eq!(next, before.revision + 1);
        assert_eq!(watch.recv().await.unwrap().unwrap().revision, next);
        if compaction.is_none() {
            let mut replay = store.watch(before.revision - 2).await.unwrap();
            assert_eq!(
                replay.recv().await.unwrap().unwrap().revision,
                before.revision - 1
            );
        }
    }
}

#[tokio::test]
async fn revisions_are_never_reused_even_when_everything_was_deleted_and_compacted() {
    let dir = tempfile::tempdir().unwrap();
    let store = compacting_every(dir.path(), 1);
    store.commit(Txn::put(key("a"), json!(1))).await.unwrap();
    let gone = store.commit(Txn::delete(key("a"))).await.unwrap();
    assert_eq!(wal_len(dir.path()), 0, "compacted after each commit");
    drop(store);

    let store = open(dir.path());
    let listing = store.list().await.unwrap();
    assert_eq!((listing.revision, listing.entries.len()), (gone, 0));
    assert_eq!(
        store.commit(Txn::put(key("a"), json!(1))).await,
        Ok(gone + 1)
    );
    assert_eq!(
        store.get(&key("a")).await.unwrap().unwrap().create_revision,
        gone + 1
    );
}

#[tokio::test]
async fn a_compaction_cut_short_after_the_snapshot_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    for i in 0..6 {
        store
            .commit(Txn::put(key(&format!("r{i}")), json!(i)))
            .await
            .unwrap();
    }
    let before = store.list().await.unwrap();
    drop(store);
    let full_log = std::fs::read(dir.path().join("wal.log")).unwrap();

    // Opening with a lower threshold compacts: a snapshot at revision 6 and an empty log.
    drop(compacting_every(dir.path(), 4));
    assert_eq!(wal_len(dir.path()), 0);
    // What a crash between renaming the snapshot and emptying the log leaves behind, with a
    // half-written temporary snapshot from a later attempt on top.
    std::fs::write(dir.path().join("wal.log"), &full_log).unwrap();
    std::fs::write(dir.path().join("snapshot.tmp"), b"half a snap").unwrap();

    let store = open(dir.path());
    assert_eq!(store.list().await.unwrap(), before);
    assert_eq!(
        store.commit(Txn::put(key("next"), json!(1))).await,
        Ok(before.revision + 1)
    );
    drop(store);
    let store = open(dir.path());
    assert_eq!(store.list().await.unwrap().revision, before.revision + 1);
}

#[tokio::test]
async fn a_torn_tail_is_cut_off_at_the_last_whole_record() {
    let dir = tempfile::tempdir().unwrap();
    let wal = dir.path().join("wal.log");
    let store = open(dir.path());
    store.commit(Txn::put(key("a"), json!(1))).await.unwrap();
    store.commit(Txn::put(key("b"), json!(2))).await.unwrap();
    let two_records = wal_len(dir.path());
    let at_two = store.list().await.unwrap();
    store.commit(Txn::put(key("c"), json!(3))).await.unwrap();
    let three_records = wal_len(dir.path());
    drop(store);
    let whole = std::fs::read(&wal).unwrap();

    // The third record cut anywhere: in its header, in its body, one byte short.
    for cut in [two_records + 3, two_records + 12, three_records - 1] {
        std::fs::write(&wal, &whole[..cut as usize]).unwrap();
        let store = open(dir.path());
        assert_eq!(store.list().await.unwrap(), at_two, "cut at {cut}");
        assert_eq!(wal_len(dir.path()), two_records, "the torn record is gone");
    }

    // Garbage or zeroes after the last record, as a crash mid-append can leave.
    for tail in [&b"\x17garbage{\"revision\":"[..], &[0; 100]] {
        let mut torn = whole.clone();
        torn.extend_from_slice(tail);
        std::fs::write(&wal, &torn).unwrap();
        let store = open(dir.path());
        assert_eq!(store.list().await.unwrap().revision, 3);
        // The next record follows the last whole one, so the log reads back again.
        assert_eq!(store.commit(Txn::put(key("d"), json!(4))).await, Ok(4));
        drop(store);
        let store = open(dir.path());
        assert_eq!(store.get(&key("d")).await.unwrap().unwrap().mod_revision, 4);
        drop(store);
        std::fs::write(&wal, &whole).unwrap();
    }
}

#[tokio::test]
async fn damage_in_the_middle_of_the_log_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let wal = dir.path().join("wal.log");
    let store = open(dir.path());
    store
        .commit(Txn::put(key("a"), json!("first")))
        .await
        .unwrap();
    let first_record = wal_len(dir.path());
    store
        .commit(Txn::put(key("b"), json!("second")))
        .await
        .unwrap();
    drop(store);
    let whole = std::fs::read(&wal).unwrap();

    // Damage in the last record looks like a torn write: only the records after it tell.
    let mut bytes = whole.clone();
    bytes[first_record as usize + 20] ^= 0x01;
    std::fs::write(&wal, &bytes).unwrap();
    assert_eq!(open(dir.path()).list().await.unwrap().revision, 1);

    let mut bytes = whole;
    bytes[20] ^= 0x01;
    std::fs::write(&wal, &bytes).unwrap();
    let err = try_open(dir.path()).err().unwrap();
    assert!(
        matches!(&err, EmbeddedError::Corrupt { file, offset: 0, .. } if *file == wal),
        "{err:?}"
    );
    let message = err.to_string();
    assert!(
        message.contains(&wal.display().to_string())
            && message.contains("byte 0")
            && message.contains("checksum mismatch")
            && message.contains("valid record follows"),
        "{message}"
    );
    assert_eq!(
        std::fs::read(&wal).unwrap(),
        bytes,
        "a damaged log is left as it was"
    );
}

#[test]
fn a_second_open_of_the_directory_fails_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let first = open(&data);
    let err = try_open(&data).err().unwrap();
    assert!(
        matches!(&err, EmbeddedError::Locked { dir, pid: Some(pid) }
            if *dir == data && *pid == std::process::id()),
        "{err:?}"
    );
    let message = err.to_string();
    assert!(
        message.contains(&data.display().to_string())
            && message.contains(&format!("pid {}", std::process::id())),
        "{message}"
    );
    drop(first);
    assert!(try_open(&data).is_ok(), "released on close");
}

/// Set in the child process the kill -9 test starts: the data directory to write to.
const WRITER_DIR: &str = "PYLON_EMBEDDED_WRITER_DIR";
const WRITER_FIRST: &str = "PYLON_EMBEDDED_WRITER_FIRST";
const WRITER_COMPACT_AFTER: &str = "PYLON_EMBEDDED_WRITER_COMPACT_AFTER";
/// Enough commits that the child is still writing when it is killed.
const WRITER_COMMITS: u64 = 20_000;

/// One round: a writer child compacting after this many records (1: on every commit, so most
/// kills land in a compaction), killed after this many acknowledged commits.
const ROUNDS: [(usize, usize); 6] = [(1, 1), (1, 30), (4, 45), (1, 90), (1_000, 60), (2, 150)];

/// A writer acknowledges `ACK <revision> <i>` once `w<i>` = [`written(i)`](written) is committed, with
/// `counter` = `{"i": i}` in the same transaction (so `counter` tells the last `i` committed,
/// acknowledged or not). After every kill the directory must hold
/// every acknowledged write and continue its revisions.
#[test]
fn acknowledged_writes_survive_kill_9() {
    if let Some(dir) = std::env::var_os(WRITER_DIR) {
        return run_writer(Path::new(&dir));
    }
    let dir = tempfile::tempdir().unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let mut acknowledged: Vec<(u64, u64)> = Vec::new();
    // A round's writes all differ from earlier ones, acknowledged or not: none is a no-op.
    let mut first = 0;
    for (compact_after, kill_after) in ROUNDS {
        let acks = write_until_killed(dir.path(), first, compact_after, kill_after);
        assert!(!acks.is_empty(), "the writer acknowledged nothing");
        let previous = acknowledged.last().map_or(0, |&(revision, _)| revision);
        assert!(acks[0].0 > previous, "revisions continue after a restart");
        assert!(
            acks.windows(2).all(|w| w[0].0 < w[1].0),
            "revisions increase"
        );
        acknowledged.extend(acks);

        let store = open(dir.path());
        runtime.block_on(async {
            let listing = store.list().await.unwrap();
            let &(last_revision, last_i) = acknowledged.last().unwrap();
            assert!(listing.revision >= last_revision);
            for &(revision, i) in &acknowledged {
                let entry = store.get(&key(&format!("w{i}"))).await.unwrap();
                let entry =
                    entry.unwrap_or_else(|| panic!("w{i}, acknowledged at {revision}, is lost"));
                assert_eq!((entry.value, entry.mod_revision), (written(i), revision));
            }
            let counter = store.get(&key("counter")).await.unwrap().unwrap();
            let last_committed = counter.value["i"].as_u64().unwrap();
            assert!(last_committed >= last_i);
            first = last_committed + 1;
            assert_eq!(counter.create_revision, acknowledged[0].0);
            let next = store.commit(Txn::put(key("probe"), json!(last_i))).await;
            assert_eq!(next, Ok(listing.revision + 1));
        });
    }
}

/// What the writer puts in `w<i>`: padded, so that writing a snapshot takes long enough for
/// kills to land in it.
fn written(i: u64) -> serde_json::Value {
    json!({"i": i, "padding": "x".repeat(1024)})
}

/// Runs a writer child until it has acknowledged `kill_after` commits, kills it with SIGKILL,
/// and returns every acknowledgement it printed.
fn write_until_killed(
    dir: &Path,
    first: u64,
    compact_after: usize,
    kill_after: usize,
) -> Vec<(u64, u64)> {
    let spawning = SPAWNING.lock().unwrap_or_else(|e| e.into_inner());
    // Returns once the child has exec'd, its copies of our descriptors closed.
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "acknowledged_writes_survive_kill_9",
            "--nocapture",
        ])
        .env(WRITER_DIR, dir)
        .env(WRITER_FIRST, first.to_string())
        .env(WRITER_COMPACT_AFTER, compact_after.to_string())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    drop(spawning);
    let stdout = child.stdout.take().unwrap();
    let (lines, acks) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            // libtest may print its own words on the same line first.
            if let Some((_, ack)) = line.split_once("ACK ") {
                let mut numbers = ack.split(' ').map(|n| n.parse::<u64>().unwrap());
                if lines
                    .send((numbers.next().unwrap(), numbers.next().unwrap()))
                    .is_err()
                {
                    break;
                }
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut received = Vec::new();
    while received.len() < kill_after {
        let left = deadline.saturating_duration_since(Instant::now());
        match acks.recv_timeout(left) {
            Ok(ack) => received.push(ack),
            // The writer ended on its own (all its commits done, or a failure shown on its
            // stderr): what it acknowledged is checked all the same.
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let _ = child.kill();
                panic!(
                    "the writer acknowledged {} commits in 120 s",
                    received.len()
                );
            }
        }
    }
    child.kill().unwrap();
    child.wait().unwrap();
    // Whatever it printed before dying was acknowledged too.
    reader.join().unwrap();
    received.extend(acks.try_iter());
    received
}

/// The child's side: commits and acknowledges until killed.
fn run_writer(dir: &Path) {
    let number = |var: &str| std::env::var(var).unwrap().parse::<u64>().unwrap();
    let options = EmbeddedOptions {
        compact_after_records: number(WRITER_COMPACT_AFTER) as usize,
        ..EmbeddedOptions::default()
    };
    let store = EmbeddedStore::open_with(dir, options).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    runtime.block_on(async {
        let first = number(WRITER_FIRST);
        for i in first..first + WRITER_COMMITS {
            let counter = store.get(&key("counter")).await.unwrap();
            let condition = counter.map_or(Precondition::Absent, |c| {
                Precondition::ModRevision(c.mod_revision)
            });
            let txn = Txn {
                writes: vec![
                    (key(&format!("w{i}")), Some(written(i))),
                    (key("counter"), Some(json!({"i": i}))),
                ],
                ..Txn::default()
            }
            .when(key("counter"), condition);
            let revision = store.commit(txn).await.unwrap();
            println!("ACK {revision} {i}");
        }
    });
}
