//! A plugin's granted directories as it sees them: wasmtime-wasi's
//! `wasi:filesystem`, except that while an event is handled again its
//! changes are discarded.
//!
//! An event handled again (replayed to rebuild state after a trap, run again
//! after the batch it was in failed, or caught up from the log after a
//! restart) already changed the directories the first time. Writing again
//! would append its line to an audit file twice, or add a count to a
//! file-kept counter twice. So while the store's [`WriteGate`] is closed,
//! every change succeeds without touching the disk: data written through a
//! descriptor or a stream is dropped, a truncating open keeps the file's
//! content, and `set-size`, `set-times`, `create-directory`, `link`,
//! `symlink`, `rename`, `unlink` and `remove-directory` do nothing. Reads see
//! the directories as they are now, with the first run's changes in them.
//!
//! The gate is checked at each write, not when a stream opens: a plugin that
//! keeps a file open across events (audit-log does) writes through the same
//! stream whether it runs live or again. A stream that writes at a position
//! goes on from where the plugin believes it is: the dropped writes move it.
//! Opening a file with `create` still creates it (empty), and `exclusive`
//! is ignored, so a replay opens what the live run created. A discarded
//! change is refused as a live one would be when the refusal does not
//! depend on what the disk holds (a read-only grant, a file open for
//! reading only, a closed stream), so a replay takes the branch the live
//! run took; one that depends on the disk's contents at the time (a file
//! already gone) cannot be answered as it was, since the disk is as the
//! live run left it.
//!
//! Calls made once whatever happens later, a query and a snapshot, write as
//! a live event does. `plugbus replay` is not handling events again in this
//! sense: it runs fresh instances on purpose, and their first run of each
//! event writes.
//!
//! Every other function is wasmtime-wasi's own (`WasiFilesystemCtxView`),
//! called as it is; this module only decides whether a change reaches it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use wasmtime::component::{HasData, Linker, Resource};
use wasmtime_wasi::OpenMode;
use wasmtime_wasi::filesystem::WasiFilesystemCtxView;
use wasmtime_wasi::p2::bindings::filesystem::types::{
    self, Descriptor, DirectoryEntryStream, HostDescriptor, HostDirectoryEntryStream,
};
use wasmtime_wasi::p2::{DynInputStream, DynOutputStream, FsError, FsResult, OutputStream, Pollable, StreamResult};

use crate::plugin::ctx::PluginCtx;

/// Whether the plugin's changes to its granted directories reach the disk:
/// open while an event is handled for the first time, closed while one is
/// handled again. One per store, shared with the streams the store opened
/// (they outlive the call that opened them).
#[derive(Clone, Default)]
pub(crate) struct WriteGate(Arc<AtomicBool>);

impl WriteGate {
    /// Opens the gate (`true`: changes are made) or closes it.
    pub fn set_open(&self, open: bool) {
        // Set and read on the store's own task, between and inside calls.
        self.0.store(!open, Ordering::Relaxed);
    }

    /// Whether changes are discarded now.
    fn discarding(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// Replaces wasmtime-wasi's `wasi:filesystem/types` in `linker` (which
/// already has every WASI interface) with the gated one.
///
/// # Errors
///
/// When the linker refuses a definition (a wasmtime bug, not bad input).
pub(crate) fn add_to_linker(linker: &mut Linker<PluginCtx>) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    let added = types::add_to_linker::<PluginCtx, GatedDirs>(linker, PluginCtx::granted_dirs);
    linker.allow_shadowing(false);
    added
}

/// [`HasData`] for the gated filesystem: what its host functions borrow.
struct GatedDirs;

impl HasData for GatedDirs {
    type Data<'a> = GatedView<'a>;
}

/// wasmtime-wasi's filesystem view and the store's gate.
pub(crate) struct GatedView<'a> {
    fs: WasiFilesystemCtxView<'a>,
    gate: &'a WriteGate,
}

impl<'a> GatedView<'a> {
    /// The view the store's filesystem functions are called with.
    pub fn new(fs: WasiFilesystemCtxView<'a>, gate: &'a WriteGate) -> GatedView<'a> {
        GatedView { fs, gate }
    }
}

impl types::Host for GatedView<'_> {
    fn convert_error_code(&mut self, err: FsError) -> wasmtime::Result<types::ErrorCode> {
        types::Host::convert_error_code(&mut self.fs, err)
    }

    fn filesystem_error_code(&mut self, err: Resource<wasmtime::Error>) -> wasmtime::Result<Option<types::ErrorCode>> {
        types::Host::filesystem_error_code(&mut self.fs, err)
    }
}

/// What a change discarded needs `fd` to be, as wasmtime-wasi (or the
/// system) checks it before a live change.
#[derive(Clone, Copy)]
enum Target {
    /// A file open for writing (`write`, `set-size`); the error is what the
    /// system answers on a file open for reading only (`EBADF` for a write,
    /// `EINVAL` for a truncation).
    File(types::ErrorCode),
    /// A directory (creating, removing, renaming, linking under it).
    Dir,
    /// Either (`set-times`).
    Any,
}

/// What a live call would have answered before it changed `fd`: `Ok` for a
/// descriptor of the `target` kind on a writable grant, else wasmtime-wasi's
/// error. A read-only grant stays read-only when the change is discarded,
/// so a replay takes the branch the live run took.
fn may_change(fs: &mut WasiFilesystemCtxView<'_>, fd: &Resource<Descriptor>, target: Target) -> FsResult<()> {
    use wasmtime_wasi::filesystem::Descriptor::{Dir, File};
    match (fs.table.get(fd)?, target) {
        (File(_), Target::Dir) => Err(types::ErrorCode::NotDirectory.into()),
        (Dir(_), Target::File(_)) => Err(types::ErrorCode::BadDescriptor.into()),
        (File(f), _) if f.perms.write_not_permitted() => Err(types::ErrorCode::NotPermitted.into()),
        (Dir(d), _) if d.perms.write_not_permitted() => Err(types::ErrorCode::NotPermitted.into()),
        (File(f), Target::File(not_open_for_writing)) if !f.open_mode.contains(OpenMode::WRITE) => {
            Err(not_open_for_writing.into())
        }
        _ => Ok(()),
    }
}

/// [`may_change`] for a change naming two directories (`link-at`,
/// `rename-at`), in wasmtime-wasi's order: both directories, both writable,
/// then (a link) not following symlinks, then both under one grant.
fn may_change_both(
    fs: &mut WasiFilesystemCtxView<'_>,
    a: &Resource<Descriptor>,
    b: &Resource<Descriptor>,
    follows_symlinks: bool,
) -> FsResult<()> {
    use wasmtime_wasi::filesystem::Descriptor::{Dir, File};
    let perms = |d: &wasmtime_wasi::filesystem::Descriptor| match d {
        Dir(d) => Ok(d.perms),
        File(_) => Err(types::ErrorCode::NotDirectory),
    };
    let (a, b) = (perms(fs.table.get(a)?)?, perms(fs.table.get(b)?)?);
    if a.write_not_permitted() || b.write_not_permitted() {
        return Err(types::ErrorCode::NotPermitted.into());
    }
    if follows_symlinks {
        return Err(types::ErrorCode::Invalid.into());
    }
    if a != b {
        return Err(types::ErrorCode::NotPermitted.into());
    }
    Ok(())
}

/// Wraps a stream wasmtime-wasi opened on `fd` so each write checks the
/// gate; `position` is where a `write-via-stream` stream starts (`None`
/// for an appending one).
fn gated(
    view: &mut GatedView<'_>,
    fd: &Resource<Descriptor>,
    stream: Resource<DynOutputStream>,
    position: Option<u64>,
) -> FsResult<Resource<DynOutputStream>> {
    let (at, writable) = match view.fs.table.get(fd)? {
        wasmtime_wasi::filesystem::Descriptor::File(f) => (
            position.map(|next| Position {
                file: f.file.clone(),
                next,
                apart: false,
            }),
            f.open_mode.contains(OpenMode::WRITE),
        ),
        wasmtime_wasi::filesystem::Descriptor::Dir(_) => (None, true),
    };
    let inner = view.fs.table.delete(stream)?;
    let wrapped: DynOutputStream = Box::new(GatedStream {
        inner,
        gate: view.gate.clone(),
        failed: Failed::No,
        writable,
        at,
    });
    Ok(view.fs.table.push(wrapped)?)
}

impl HostDescriptor for GatedView<'_> {
    async fn advise(
        &mut self,
        fd: Resource<Descriptor>,
        offset: types::Filesize,
        len: types::Filesize,
        advice: types::Advice,
    ) -> FsResult<()> {
        self.fs.advise(fd, offset, len, advice).await
    }

    async fn sync_data(&mut self, fd: Resource<Descriptor>) -> FsResult<()> {
        self.fs.sync_data(fd).await
    }

    async fn get_flags(&mut self, fd: Resource<Descriptor>) -> FsResult<types::DescriptorFlags> {
        self.fs.get_flags(fd).await
    }

    async fn get_type(&mut self, fd: Resource<Descriptor>) -> FsResult<types::DescriptorType> {
        self.fs.get_type(fd).await
    }

    async fn set_size(&mut self, fd: Resource<Descriptor>, size: types::Filesize) -> FsResult<()> {
        if self.gate.discarding() {
            return may_change(&mut self.fs, &fd, Target::File(types::ErrorCode::Invalid));
        }
        self.fs.set_size(fd, size).await
    }

    async fn set_times(
        &mut self,
        fd: Resource<Descriptor>,
        atim: types::NewTimestamp,
        mtim: types::NewTimestamp,
    ) -> FsResult<()> {
        if self.gate.discarding() {
            return may_change(&mut self.fs, &fd, Target::Any);
        }
        self.fs.set_times(fd, atim, mtim).await
    }

    async fn read(
        &mut self,
        fd: Resource<Descriptor>,
        len: types::Filesize,
        offset: types::Filesize,
    ) -> FsResult<(Vec<u8>, bool)> {
        self.fs.read(fd, len, offset).await
    }

    async fn write(
        &mut self,
        fd: Resource<Descriptor>,
        buf: Vec<u8>,
        offset: types::Filesize,
    ) -> FsResult<types::Filesize> {
        if self.gate.discarding() {
            may_change(&mut self.fs, &fd, Target::File(types::ErrorCode::BadDescriptor))?;
            if offset > MAX_OFFSET {
                // Live, the system refuses the offset (`EINVAL`).
                return Err(types::ErrorCode::Invalid.into());
            }
            return Ok(buf.len() as types::Filesize);
        }
        self.fs.write(fd, buf, offset).await
    }

    async fn read_directory(&mut self, fd: Resource<Descriptor>) -> FsResult<Resource<DirectoryEntryStream>> {
        self.fs.read_directory(fd).await
    }

    async fn sync(&mut self, fd: Resource<Descriptor>) -> FsResult<()> {
        self.fs.sync(fd).await
    }

    async fn create_directory_at(&mut self, fd: Resource<Descriptor>, path: String) -> FsResult<()> {
        if self.gate.discarding() {
            return may_change(&mut self.fs, &fd, Target::Dir);
        }
        self.fs.create_directory_at(fd, path).await
    }

    async fn stat(&mut self, fd: Resource<Descriptor>) -> FsResult<types::DescriptorStat> {
        self.fs.stat(fd).await
    }

    async fn stat_at(
        &mut self,
        fd: Resource<Descriptor>,
        path_flags: types::PathFlags,
        path: String,
    ) -> FsResult<types::DescriptorStat> {
        self.fs.stat_at(fd, path_flags, path).await
    }

    async fn set_times_at(
        &mut self,
        fd: Resource<Descriptor>,
        path_flags: types::PathFlags,
        path: String,
        atim: types::NewTimestamp,
        mtim: types::NewTimestamp,
    ) -> FsResult<()> {
        if self.gate.discarding() {
            return may_change(&mut self.fs, &fd, Target::Dir);
        }
        self.fs.set_times_at(fd, path_flags, path, atim, mtim).await
    }

    async fn link_at(
        &mut self,
        fd: Resource<Descriptor>,
        old_path_flags: types::PathFlags,
        old_path: String,
        new_descriptor: Resource<Descriptor>,
        new_path: String,
    ) -> FsResult<()> {
        if self.gate.discarding() {
            let follows = old_path_flags.contains(types::PathFlags::SYMLINK_FOLLOW);
            return may_change_both(&mut self.fs, &fd, &new_descriptor, follows);
        }
        self.fs
            .link_at(fd, old_path_flags, old_path, new_descriptor, new_path)
            .await
    }

    async fn open_at(
        &mut self,
        fd: Resource<Descriptor>,
        path_flags: types::PathFlags,
        path: String,
        mut oflags: types::OpenFlags,
        mut flags: types::DescriptorFlags,
    ) -> FsResult<Resource<Descriptor>> {
        // A directory's open with either flag is refused live (`invalid`):
        // left to wasmtime-wasi to refuse the same way.
        let changing = types::OpenFlags::TRUNCATE | types::OpenFlags::EXCLUSIVE;
        if self.gate.discarding() && !oflags.contains(types::OpenFlags::DIRECTORY) && oflags.intersects(changing) {
            // The first run emptied it already and wrote what it holds now;
            // and it created the file it asked for, which exists now. A
            // truncating open is a writing one: the descriptor keeps the
            // access (and a read-only grant refuses it) as live.
            if oflags.contains(types::OpenFlags::TRUNCATE) {
                // Live, a descriptor not asked to write is opened to read
                // too (wasmtime-wasi's `open-at`): kept so.
                if !flags.contains(types::DescriptorFlags::WRITE) {
                    flags |= types::DescriptorFlags::READ;
                }
                flags |= types::DescriptorFlags::WRITE;
            }
            oflags &= !changing;
        }
        self.fs.open_at(fd, path_flags, path, oflags, flags).await
    }

    fn drop(&mut self, fd: Resource<Descriptor>) -> wasmtime::Result<()> {
        HostDescriptor::drop(&mut self.fs, fd)
    }

    async fn readlink_at(&mut self, fd: Resource<Descriptor>, path: String) -> FsResult<String> {
        self.fs.readlink_at(fd, path).await
    }

    async fn remove_directory_at(&mut self, fd: Resource<Descriptor>, path: String) -> FsResult<()> {
        if self.gate.discarding() {
            return may_change(&mut self.fs, &fd, Target::Dir);
        }
        self.fs.remove_directory_at(fd, path).await
    }

    async fn rename_at(
        &mut self,
        fd: Resource<Descriptor>,
        old_path: String,
        new_fd: Resource<Descriptor>,
        new_path: String,
    ) -> FsResult<()> {
        if self.gate.discarding() {
            return may_change_both(&mut self.fs, &fd, &new_fd, false);
        }
        self.fs.rename_at(fd, old_path, new_fd, new_path).await
    }

    async fn symlink_at(&mut self, fd: Resource<Descriptor>, src_path: String, dest_path: String) -> FsResult<()> {
        if self.gate.discarding() {
            return may_change(&mut self.fs, &fd, Target::Dir);
        }
        self.fs.symlink_at(fd, src_path, dest_path).await
    }

    async fn unlink_file_at(&mut self, fd: Resource<Descriptor>, path: String) -> FsResult<()> {
        if self.gate.discarding() {
            return may_change(&mut self.fs, &fd, Target::Dir);
        }
        self.fs.unlink_file_at(fd, path).await
    }

    fn read_via_stream(
        &mut self,
        fd: Resource<Descriptor>,
        offset: types::Filesize,
    ) -> FsResult<Resource<DynInputStream>> {
        self.fs.read_via_stream(fd, offset)
    }

    fn write_via_stream(
        &mut self,
        fd: Resource<Descriptor>,
        offset: types::Filesize,
    ) -> FsResult<Resource<DynOutputStream>> {
        let borrowed = Resource::new_borrow(fd.rep());
        let stream = self.fs.write_via_stream(fd, offset)?;
        gated(self, &borrowed, stream, Some(offset))
    }

    fn append_via_stream(&mut self, fd: Resource<Descriptor>) -> FsResult<Resource<DynOutputStream>> {
        let borrowed = Resource::new_borrow(fd.rep());
        let stream = self.fs.append_via_stream(fd)?;
        gated(self, &borrowed, stream, None)
    }

    async fn is_same_object(&mut self, a: Resource<Descriptor>, b: Resource<Descriptor>) -> wasmtime::Result<bool> {
        self.fs.is_same_object(a, b).await
    }

    async fn metadata_hash(&mut self, fd: Resource<Descriptor>) -> FsResult<types::MetadataHashValue> {
        self.fs.metadata_hash(fd).await
    }

    async fn metadata_hash_at(
        &mut self,
        fd: Resource<Descriptor>,
        path_flags: types::PathFlags,
        path: String,
    ) -> FsResult<types::MetadataHashValue> {
        self.fs.metadata_hash_at(fd, path_flags, path).await
    }
}

impl HostDirectoryEntryStream for GatedView<'_> {
    async fn read_directory_entry(
        &mut self,
        stream: Resource<DirectoryEntryStream>,
    ) -> FsResult<Option<types::DirectoryEntry>> {
        self.fs.read_directory_entry(stream).await
    }

    fn drop(&mut self, stream: Resource<DirectoryEntryStream>) -> wasmtime::Result<()> {
        HostDirectoryEntryStream::drop(&mut self.fs, stream)
    }
}

/// A file's output stream whose writes are dropped while the gate is
/// closed: accepted, as a live write would be, and never handed on.
struct GatedStream {
    inner: DynOutputStream,
    gate: WriteGate,
    /// A discarded write that a live one would have failed (the file not
    /// open for writing, an offset the system refuses): reported, as a live
    /// stream reports its write's failure, by the next `check-write` or
    /// `flush`, after which the stream is closed.
    failed: Failed,
    /// The file is open for writing: a live write reaches it (one that is
    /// not fails with `EBADF`, and a dropped one does the same).
    writable: bool,
    /// For a stream that writes at a position (`write-via-stream`): where
    /// its next byte goes. `None` for an appending one, whose dropped writes
    /// move nothing.
    at: Option<Position>,
}

/// A [`GatedStream`]'s discarded write that would have failed live.
#[derive(Clone, Copy)]
enum Failed {
    No,
    /// Not reported yet: the `errno` the system gives such a write.
    Pending(i32),
    /// Reported: the stream takes nothing more, as a live one after a
    /// failed write.
    Closed,
}

/// The largest offset the system writes at: a file offset is a signed
/// 64-bit number (`off_t`), so a write past it fails with `EINVAL`.
const MAX_OFFSET: u64 = i64::MAX as u64;

/// Where a positional stream's next byte goes, kept by the wrapper: a
/// dropped write moves it as a written one would (the guest's own offset
/// moved), which wasmtime-wasi's stream cannot be told.
struct Position {
    file: Arc<std::fs::File>,
    next: u64,
    /// A write was dropped: the inner stream's position is behind, and is
    /// replaced by one at `next` before the next live write.
    apart: bool,
}

impl GatedStream {
    /// Drops `len` bytes as if written, failing as a live write would: at
    /// once when the stream is closed, at the next `check-write` when the
    /// write itself would fail (the file not open for writing, an offset
    /// the system refuses).
    fn drop_bytes(&mut self, len: usize) -> StreamResult<()> {
        self.settle_failed()?;
        self.inner.check_write()?;
        if !self.writable {
            self.failed = Failed::Pending(libc::EBADF);
            return Ok(());
        }
        if let Some(at) = &mut self.at {
            if at.next > MAX_OFFSET {
                self.failed = Failed::Pending(libc::EINVAL);
                return Ok(());
            }
            // Saturating: the live write at such an offset fails, and so
            // does the first live write after (never one at 0).
            at.next = at.next.saturating_add(len as u64);
            at.apart = true;
        }
        Ok(())
    }

    /// Reports a discarded write's failure once, then that the stream is closed.
    fn settle_failed(&mut self) -> StreamResult<()> {
        match self.failed {
            Failed::No => Ok(()),
            Failed::Pending(errno) => {
                self.failed = Failed::Closed;
                Err(wasmtime_wasi::p2::StreamError::LastOperationFailed(
                    std::io::Error::from_raw_os_error(errno).into(),
                ))
            }
            Failed::Closed => Err(wasmtime_wasi::p2::StreamError::Closed),
        }
    }

    /// Before a live write: a stream left behind by dropped writes is
    /// replaced by one writing where the plugin believes it is.
    fn catch_up(&mut self) {
        if let Some(at) = self.at.as_mut().filter(|at| at.apart) {
            at.apart = false;
            self.inner = Box::new(PositionalStream {
                file: at.file.clone(),
                next: at.next,
                state: Pending::Idle,
            });
        }
    }

    /// Counts `len` bytes handed to the inner stream.
    fn advance(&mut self, len: usize) {
        if let Some(at) = &mut self.at {
            at.next = at.next.saturating_add(len as u64);
        }
    }
}

#[async_trait::async_trait]
impl OutputStream for GatedStream {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        if self.gate.discarding() {
            return self.drop_bytes(bytes.len());
        }
        self.catch_up();
        let len = bytes.len();
        self.inner.write(bytes)?;
        self.advance(len);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        self.settle_failed()?;
        self.inner.flush()
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        self.settle_failed()?;
        self.inner.check_write()
    }

    async fn blocking_write_and_flush(&mut self, bytes: Bytes) -> StreamResult<()> {
        if self.gate.discarding() {
            // As a live one: after the stream's last write settled, and
            // failing now if the write would.
            self.inner.ready().await;
            self.drop_bytes(bytes.len())?;
            return self.settle_failed();
        }
        self.catch_up();
        let len = bytes.len();
        self.inner.blocking_write_and_flush(bytes).await?;
        self.advance(len);
        Ok(())
    }

    fn write_zeroes(&mut self, nelem: usize) -> StreamResult<()> {
        if self.gate.discarding() {
            return self.drop_bytes(nelem);
        }
        self.catch_up();
        self.inner.write_zeroes(nelem)?;
        self.advance(nelem);
        Ok(())
    }

    async fn cancel(&mut self) {
        self.inner.cancel().await
    }
}

/// Most bytes a [`PositionalStream`] takes per write: 64 KiB, what
/// wasmtime-wasi's own file streams take (`check-write` tells the guest), so
/// a stream answers the same before and after it was replaced.
const POSITIONAL_WRITE_CAPACITY: usize = 64 << 10;

/// A file stream writing at a position, each write on a blocking thread as
/// wasmtime-wasi's are: what a [`GatedStream`] writes through once dropped
/// writes have left wasmtime-wasi's own stream behind.
struct PositionalStream {
    file: Arc<std::fs::File>,
    next: u64,
    state: Pending,
}

/// A [`PositionalStream`]'s last write.
enum Pending {
    Idle,
    Writing(tokio::sync::oneshot::Receiver<std::io::Result<()>>),
    Failed(std::io::Error),
    /// The failure was reported: the stream takes no more, as wasmtime-wasi's.
    Closed,
}

impl PositionalStream {
    /// Takes the last write's result (`None`: its task ended without one).
    fn settle(&mut self, result: Option<std::io::Result<()>>) {
        self.state = match result {
            Some(Ok(())) => Pending::Idle,
            Some(Err(e)) => Pending::Failed(e),
            None => Pending::Failed(std::io::Error::other(
                "the write's blocking task ended without an answer",
            )),
        };
    }

    /// Waits for the last write, so none is left running once the guest
    /// dropped the stream (as wasmtime-wasi's own streams wait).
    async fn settle_last(&mut self) {
        if let Pending::Writing(rx) = &mut self.state {
            let result = rx.await.ok();
            self.settle(result);
        }
    }
}

#[async_trait::async_trait]
impl OutputStream for PositionalStream {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        if matches!(self.state, Pending::Closed) {
            return Err(wasmtime_wasi::p2::StreamError::Closed);
        }
        if !matches!(self.state, Pending::Idle) {
            return Err(wasmtime_wasi::p2::StreamError::trap(
                "write not permitted: check_write not called first",
            ));
        }
        let (file, at) = (self.file.clone(), self.next);
        self.next = self.next.saturating_add(bytes.len() as u64);
        let (tx, rx) = tokio::sync::oneshot::channel();
        tokio::task::spawn_blocking(move || {
            use std::os::unix::fs::FileExt;
            let _ = tx.send(file.write_all_at(&bytes, at));
        });
        self.state = Pending::Writing(rx);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        // Nothing is buffered: each write goes to the file as it is made.
        Ok(())
    }

    async fn cancel(&mut self) {
        self.settle_last().await;
        self.state = Pending::Closed;
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        if let Pending::Writing(rx) = &mut self.state {
            match rx.try_recv() {
                Err(tokio::sync::oneshot::error::TryRecvError::Empty) => return Ok(0),
                Ok(result) => self.settle(Some(result)),
                Err(tokio::sync::oneshot::error::TryRecvError::Closed) => self.settle(None),
            }
        }
        match &self.state {
            Pending::Idle => Ok(POSITIONAL_WRITE_CAPACITY),
            Pending::Closed => Err(wasmtime_wasi::p2::StreamError::Closed),
            Pending::Writing(_) => Ok(0),
            Pending::Failed(_) => match std::mem::replace(&mut self.state, Pending::Closed) {
                Pending::Failed(e) => Err(wasmtime_wasi::p2::StreamError::LastOperationFailed(e.into())),
                other => {
                    self.state = other;
                    Ok(0)
                }
            },
        }
    }
}

#[async_trait::async_trait]
impl Pollable for PositionalStream {
    async fn ready(&mut self) {
        self.settle_last().await
    }
}

#[async_trait::async_trait]
impl Pollable for GatedStream {
    async fn ready(&mut self) {
        self.inner.ready().await
    }
}
