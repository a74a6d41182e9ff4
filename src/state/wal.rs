//! The write-ahead log: every table write is appended here, and made
//! durable, before it takes effect and is acknowledged.
//!
//! A checkpoint holds each table as of some write; the log holds the
//! writes since. Recovery restores the checkpoint, then replays the log
//! records of each table that are newer than the checkpoint's position for
//! that table (see `engine/checkpoint.rs`). Together they are the durable
//! state of every table: nothing acknowledged is in neither.
//!
//! Layout: `<data-dir>/wal/<first lsn>.wal` segment files, each a magic
//! header then records `[payload len u32][crc32 u32][lsn u64][relation
//! len u16][relation][payload]` (little-endian; the CRC covers everything
//! after itself). The payload is opaque here (the engine encodes a table's
//! change). Log sequence numbers (LSNs) grow by one per record, across
//! segments and restarts.
//!
//! Group commit: one thread owns the active segment. It takes every append
//! waiting, writes them with one `write`, makes them durable with one
//! `fdatasync`, then answers each; so a thousand concurrent writers pay for
//! one sync, not a thousand. An append that asks for no sync
//! (`synchronous_commit = off`) is answered once written (it survives the
//! process being killed, not the machine losing power).
//!
//! Invariants:
//! - an append is answered `Ok` only once its record is durable (or, without
//!   sync, written); a failed write or sync is answered with an error and
//!   the segment is cut back to before it, so a write reported failed is
//!   never replayed;
//! - a torn record at a segment's end (a crash mid-write) ends that
//!   segment's records: it was never acknowledged;
//! - a segment is deleted only when the caller's `needed` says none of its
//!   records is (the retained checkpoints all hold them).

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};

use tokio::sync::oneshot;

use super::codec::crc32;
use crate::error::{EddyError, Result};

const MAGIC: &[u8; 8] = b"EDDYWAL1";
/// Bytes before a record's relation name: len, crc, lsn, relation len.
const RECORD_HEADER: usize = 4 + 4 + 8 + 2;
/// A segment this big is closed and a new one started.
const SEGMENT_BYTES: u64 = 64 << 20;

/// One record read back from the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalRecord {
    pub lsn: u64,
    /// The table the record is a write of.
    pub relation: String,
    pub payload: Vec<u8>,
}

/// Whether a record (of `relation`, at `lsn`) must be kept for recovery.
pub type Needed = Box<dyn Fn(&str, u64) -> bool + Send>;

/// One record to append, and who waits for its LSN.
struct Append {
    relation: String,
    payload: Vec<u8>,
    sync: bool,
    reply: oneshot::Sender<Result<u64>>,
}

enum Request {
    Append(Append),
    Retain {
        needed: Needed,
        reply: oneshot::Sender<Result<usize>>,
    },
}

/// The handle writers share; the log's thread stops when the last handle
/// is dropped.
#[derive(Clone)]
pub struct WriteAheadLog {
    requests: mpsc::Sender<Request>,
    /// The LSN of the last record appended (0: none yet).
    last_lsn: Arc<AtomicU64>,
    dir: PathBuf,
}

impl std::fmt::Debug for WriteAheadLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriteAheadLog")
            .field("dir", &self.dir)
            .field("last_lsn", &self.last_lsn())
            .finish()
    }
}

impl WriteAheadLog {
    /// Opens the log in `dir` (made if missing): returns the handle and
    /// every record the log holds, in LSN order. New records go to a new
    /// segment, with LSNs above every record read and above `floor` (the
    /// newest LSN a checkpoint names: the log may have been emptied since).
    pub fn open(dir: &Path, floor: u64) -> Result<(Self, Vec<WalRecord>)> {
        std::fs::create_dir_all(dir).map_err(|e| io_error(dir, "create", e))?;
        let mut segments = Vec::new();
        let mut records = Vec::new();
        for path in segment_paths(dir)? {
            let bytes = std::fs::read(&path).map_err(|e| io_error(&path, "read", e))?;
            let (read, torn) = parse_segment(&bytes);
            if let Some(at) = torn {
                tracing::warn!(
                    segment = %path.display(),
                    offset = at,
                    "write-ahead log: a torn record ends this segment (a write cut short by a crash, never acknowledged)"
                );
            }
            let mut segment = Segment::closed(path);
            for record in &read {
                segment.note(&record.relation, record.lsn);
            }
            segments.push(segment);
            records.extend(read);
        }
        records.sort_by_key(|r| r.lsn);
        let last_lsn = records
            .last()
            .map_or(0, |r| r.lsn)
            .max(
                segments
                    .iter()
                    .filter_map(|s| first_lsn_of(&s.path))
                    .max()
                    .unwrap_or(0)
                    .saturating_sub(1),
            )
            .max(floor);
        let last_lsn = Arc::new(AtomicU64::new(last_lsn));
        let mut writer = Writer {
            dir: dir.to_path_buf(),
            closed: segments,
            active: None,
            last_lsn: last_lsn.clone(),
        };
        writer.start_segment()?;
        let (requests, receiver) = mpsc::channel();
        std::thread::Builder::new()
            .name("eddy-wal".into())
            .spawn(move || writer.run(receiver))
            .map_err(|e| crate::internal!("cannot start the write-ahead log thread: {e}"))?;
        Ok((
            Self {
                requests,
                last_lsn,
                dir: dir.to_path_buf(),
            },
            records,
        ))
    }

    /// Appends a record of `relation` and waits until it is durable (with
    /// `sync`) or written (without); returns its LSN. On error nothing of
    /// it is in the log.
    pub async fn append(&self, relation: &str, payload: Vec<u8>, sync: bool) -> Result<u64> {
        let (reply, answer) = oneshot::channel();
        self.requests
            .send(Request::Append(Append {
                relation: relation.to_string(),
                payload,
                sync,
                reply,
            }))
            .map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }

    /// Deletes every segment none of whose records is `needed`; returns
    /// how many went.
    pub async fn retain(&self, needed: Needed) -> Result<usize> {
        let (reply, answer) = oneshot::channel();
        self.requests
            .send(Request::Retain { needed, reply })
            .map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }

    /// The LSN of the last record appended (0 when none ever was).
    pub fn last_lsn(&self) -> u64 {
        self.last_lsn.load(Ordering::Acquire)
    }
}

fn stopped() -> EddyError {
    EddyError::Shutdown("the write-ahead log has stopped".into())
}

/// A failed log write as the client sees it: 53100 when the disk is full,
/// 58030 otherwise. Nothing of the write took effect.
fn write_failed(path: &Path, e: &std::io::Error) -> EddyError {
    let message = format!(
        "could not write to the write-ahead log {}: {e}; the write did not take effect",
        path.display()
    );
    if e.kind() == std::io::ErrorKind::StorageFull || e.raw_os_error() == Some(28) {
        EddyError::DiskFull(message)
    } else {
        EddyError::LogWrite(message)
    }
}

fn io_error(path: &Path, what: &str, e: std::io::Error) -> EddyError {
    EddyError::LogWrite(format!(
        "write-ahead log: cannot {what} {}: {e}",
        path.display()
    ))
}

/// The segment files of `dir`, oldest first.
fn segment_paths(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| io_error(dir, "list", e))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| first_lsn_of(p).is_some())
        .collect();
    paths.sort_by_key(|p| first_lsn_of(p));
    Ok(paths)
}

/// The first LSN a segment was started at, from its name.
fn first_lsn_of(path: &Path) -> Option<u64> {
    let name = path.file_name()?.to_str()?;
    name.strip_suffix(".wal")?.parse().ok()
}

/// The records of a segment's bytes, and where a torn or damaged record
/// ended them (if one did).
fn parse_segment(bytes: &[u8]) -> (Vec<WalRecord>, Option<usize>) {
    let mut records = Vec::new();
    if bytes.len() < MAGIC.len() || &bytes[..MAGIC.len()] != MAGIC {
        return (records, (!bytes.is_empty()).then_some(0));
    }
    let mut at = MAGIC.len();
    while at < bytes.len() {
        match parse_record(&bytes[at..]) {
            Some((record, used)) => {
                records.push(record);
                at += used;
            }
            None => return (records, Some(at)),
        }
    }
    (records, None)
}

fn parse_record(bytes: &[u8]) -> Option<(WalRecord, usize)> {
    if bytes.len() < RECORD_HEADER {
        return None;
    }
    let u32_at = |i: usize| u32::from_le_bytes(bytes[i..i + 4].try_into().unwrap());
    let payload_len = u32_at(0) as usize;
    let crc = u32_at(4);
    let lsn = u64::from_le_bytes(bytes[8..16].try_into().unwrap());
    let relation_len = u16::from_le_bytes(bytes[16..18].try_into().unwrap()) as usize;
    let total = RECORD_HEADER + relation_len + payload_len;
    if bytes.len() < total || crc32(&bytes[8..total]) != crc {
        return None;
    }
    let relation =
        String::from_utf8(bytes[RECORD_HEADER..RECORD_HEADER + relation_len].to_vec()).ok()?;
    let payload = bytes[RECORD_HEADER + relation_len..total].to_vec();
    Some((
        WalRecord {
            lsn,
            relation,
            payload,
        },
        total,
    ))
}

fn encode_record(out: &mut Vec<u8>, lsn: u64, relation: &str, payload: &[u8]) {
    let start = out.len();
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&lsn.to_le_bytes());
    out.extend_from_slice(&(relation.len() as u16).to_le_bytes());
    out.extend_from_slice(relation.as_bytes());
    out.extend_from_slice(payload);
    let crc = crc32(&out[start + 8..]);
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// A segment file and, per relation, the newest LSN it holds.
struct Segment {
    path: PathBuf,
    newest: BTreeMap<String, u64>,
}

impl Segment {
    fn closed(path: PathBuf) -> Self {
        Self {
            path,
            newest: BTreeMap::new(),
        }
    }

    fn note(&mut self, relation: &str, lsn: u64) {
        let newest = self.newest.entry(relation.to_string()).or_insert(lsn);
        *newest = (*newest).max(lsn);
    }

    fn needed(&self, needed: &Needed) -> bool {
        self.newest
            .iter()
            .any(|(relation, &lsn)| needed(relation, lsn))
    }
}

struct ActiveSegment {
    segment: Segment,
    file: File,
    /// Bytes of whole, acknowledged records (and the header).
    len: u64,
}

struct Writer {
    dir: PathBuf,
    closed: Vec<Segment>,
    active: Option<ActiveSegment>,
    last_lsn: Arc<AtomicU64>,
}

impl Writer {
    fn run(mut self, requests: mpsc::Receiver<Request>) {
        while let Ok(first) = requests.recv() {
            let mut appends = Vec::new();
            let mut retains = Vec::new();
            for request in std::iter::once(first).chain(requests.try_iter()) {
                match request {
                    Request::Append(append) => appends.push(append),
                    Request::Retain { needed, reply } => retains.push((needed, reply)),
                }
            }
            if !appends.is_empty() {
                self.append_all(appends);
            }
            for (needed, reply) in retains {
                let _ = reply.send(self.retain(&needed));
            }
        }
    }

    /// One write and (when any asks) one sync for every append waiting.
    fn append_all(&mut self, appends: Vec<Append>) {
        if self.active.is_none() {
            if let Err(e) = self.start_segment() {
                for append in appends {
                    let _ = append.reply.send(Err(again(&e)));
                }
                return;
            }
        }
        let active = self.active.as_mut().expect("started above");
        let mut buffer = Vec::new();
        let mut next = self.last_lsn.load(Ordering::Acquire);
        let mut assigned = Vec::with_capacity(appends.len());
        for Append {
            relation,
            payload,
            sync,
            reply,
        } in appends
        {
            next += 1;
            encode_record(&mut buffer, next, &relation, &payload);
            assigned.push((relation, next, sync, reply));
        }
        let path = active.segment.path.clone();
        let written = active.file.write_all(&buffer);
        if let Err(e) = written {
            self.cut_back(&path);
            for (.., reply) in assigned {
                let _ = reply.send(Err(write_failed(&path, &e)));
            }
            return;
        }
        // Written: answer those that did not ask for a sync.
        let mut waiting = Vec::new();
        for (relation, lsn, sync, reply) in assigned {
            active.segment.note(&relation, lsn);
            if sync {
                waiting.push((lsn, reply));
            } else {
                let _ = reply.send(Ok(lsn));
            }
        }
        if !waiting.is_empty() {
            if let Err(e) = active.file.sync_data() {
                // The kernel may have dropped the pages; what was not
                // synced must not come back at recovery.
                self.cut_back(&path);
                for (_, reply) in waiting {
                    let _ = reply.send(Err(write_failed(&path, &e)));
                }
                return;
            }
        }
        active.len += buffer.len() as u64;
        self.last_lsn.store(next, Ordering::Release);
        for (lsn, reply) in waiting {
            let _ = reply.send(Ok(lsn));
        }
        if active.len >= SEGMENT_BYTES {
            self.close_active();
        }
    }

    /// After a failed write or sync: the active segment cut back to its
    /// acknowledged records and closed (the next append starts a new one),
    /// so nothing of the failed batch is ever read back.
    fn cut_back(&mut self, path: &Path) {
        if let Some(active) = &self.active {
            let cut = active
                .file
                .set_len(active.len)
                .and_then(|_| active.file.sync_all());
            if let Err(e) = cut {
                tracing::error!(segment = %path.display(), error = %e, "write-ahead log: cannot cut back a failed write; removing what it wrote");
            }
        }
        self.close_active();
    }

    fn close_active(&mut self) {
        if let Some(active) = self.active.take() {
            self.closed.push(active.segment);
        }
    }

    /// Starts a new segment at the next LSN (durably: file and directory).
    fn start_segment(&mut self) -> Result<()> {
        let first = self.last_lsn.load(Ordering::Acquire) + 1;
        let path = self.dir.join(format!("{first:020}.wal"));
        // A segment of that name holds no record (every record is below
        // `first`): at most a torn one. It is replaced.
        self.closed.retain(|segment| segment.path != path);
        let fail = |e: &std::io::Error| write_failed(&path, e);
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(&path)
            .map_err(|e| fail(&e))?;
        let started = file
            .write_all(MAGIC)
            .and_then(|_| file.sync_all())
            .and_then(|_| File::open(&self.dir).and_then(|d| d.sync_all()));
        if let Err(e) = started {
            let _ = std::fs::remove_file(&path);
            return Err(fail(&e));
        }
        self.active = Some(ActiveSegment {
            segment: Segment::closed(path),
            file,
            len: MAGIC.len() as u64,
        });
        Ok(())
    }

    /// Deletes the segments no record of which is needed; the active one
    /// too (closing it) when it holds records and none is needed.
    fn retain(&mut self, needed: &Needed) -> Result<usize> {
        if let Some(active) = &self.active {
            if !active.segment.newest.is_empty() && !active.segment.needed(needed) {
                self.close_active();
            }
        }
        let mut deleted = 0;
        let mut kept = Vec::new();
        for segment in std::mem::take(&mut self.closed) {
            if segment.needed(needed) {
                kept.push(segment);
                continue;
            }
            match std::fs::remove_file(&segment.path) {
                Ok(()) => deleted += 1,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => deleted += 1,
                Err(e) => {
                    tracing::warn!(segment = %segment.path.display(), error = %e, "write-ahead log: cannot delete a segment");
                    kept.push(segment);
                }
            }
        }
        self.closed = kept;
        if self.active.is_none() {
            // An empty segment named after the next LSN: LSNs never go back,
            // even if every record is deleted.
            self.start_segment()?;
        }
        Ok(deleted)
    }
}

/// The same error again, for answering several waiters.
fn again(e: &EddyError) -> EddyError {
    match e {
        EddyError::DiskFull(m) => EddyError::DiskFull(m.clone()),
        other => EddyError::LogWrite(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("eddy-wal-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[tokio::test]
    async fn records_come_back_in_order_across_restarts() {
        let dir = dir("order");
        let (wal, records) = WriteAheadLog::open(&dir, 0).unwrap();
        assert!(records.is_empty());
        let a = wal.append("t", b"one".to_vec(), true).await.unwrap();
        let b = wal.append("u", b"two".to_vec(), false).await.unwrap();
        assert_eq!((a, b), (1, 2));
        drop(wal);
        let (wal, records) = WriteAheadLog::open(&dir, 0).unwrap();
        let read: Vec<(u64, &str, &[u8])> = records
            .iter()
            .map(|r| (r.lsn, r.relation.as_str(), r.payload.as_slice()))
            .collect();
        assert_eq!(read, vec![(1, "t", &b"one"[..]), (2, "u", &b"two"[..])]);
        // LSNs go on from where they were.
        assert_eq!(wal.append("t", vec![], true).await.unwrap(), 3);
    }

    #[tokio::test]
    async fn concurrent_appends_share_syncs_and_get_distinct_lsns() {
        let dir = dir("group");
        let (wal, _) = WriteAheadLog::open(&dir, 0).unwrap();
        let mut tasks = Vec::new();
        for i in 0..200u32 {
            let wal = wal.clone();
            tasks.push(tokio::spawn(async move {
                wal.append("t", i.to_le_bytes().to_vec(), true)
                    .await
                    .unwrap()
            }));
        }
        let mut lsns = Vec::new();
        for task in tasks {
            lsns.push(task.await.unwrap());
        }
        lsns.sort();
        assert_eq!(lsns, (1..=200).collect::<Vec<_>>());
        drop(wal);
        assert_eq!(WriteAheadLog::open(&dir, 0).unwrap().1.len(), 200);
    }

    #[tokio::test]
    async fn a_torn_tail_ends_the_segment() {
        let dir = dir("torn");
        let (wal, _) = WriteAheadLog::open(&dir, 0).unwrap();
        wal.append("t", b"kept".to_vec(), true).await.unwrap();
        wal.append("t", b"torn".to_vec(), true).await.unwrap();
        drop(wal);
        let path = segment_paths(&dir).unwrap().pop().unwrap();
        let len = std::fs::metadata(&path).unwrap().len();
        let file = OpenOptions::new().write(true).open(&path).unwrap();
        file.set_len(len - 3).unwrap();
        let (_, records) = WriteAheadLog::open(&dir, 0).unwrap();
        assert_eq!(records.len(), 1);
        assert_eq!(records[0].payload, b"kept");
    }

    #[tokio::test]
    async fn segments_go_once_no_record_in_them_is_needed() {
        let dir = dir("retain");
        let (wal, _) = WriteAheadLog::open(&dir, 0).unwrap();
        wal.append("t", vec![1], true).await.unwrap();
        wal.append("u", vec![2], true).await.unwrap();
        // u's record (lsn 2) is still needed: the segment stays.
        let needed: Needed = Box::new(|relation, lsn| relation == "u" && lsn > 1);
        assert_eq!(wal.retain(needed).await.unwrap(), 0);
        let needed: Needed = Box::new(|_, lsn| lsn > 2);
        assert_eq!(wal.retain(needed).await.unwrap(), 1);
        wal.append("t", vec![3], true).await.unwrap();
        drop(wal);
        let (_, records) = WriteAheadLog::open(&dir, 0).unwrap();
        assert_eq!(records.iter().map(|r| r.lsn).collect::<Vec<_>>(), vec![3]);
    }
}
