//! Bundle files taken in under the data directory: one pass that judges
//! the manifest first (the Kubernetes version, the room), then checks and
//! unpacks every member. For `install bundle=FILE`, `hakube bundle unpack`,
//! a joiner's stream from a master, and an upgrade's fetch by the agent.

use std::path::{Path, PathBuf};

use anyhow::Context as _;

use crate::bundle::{self, PublicKey};
use crate::host::paths::Paths;
use crate::progress::Progress;

/// Reads the chunks of a response body, sent by the task that receives
/// them, as a byte stream (for the bundle reader on its own thread).
pub struct ChannelReader {
    rx: tokio::sync::mpsc::Receiver<axum::body::Bytes>,
    chunk: axum::body::Bytes,
}

impl ChannelReader {
    pub fn new(rx: tokio::sync::mpsc::Receiver<axum::body::Bytes>) -> ChannelReader {
        ChannelReader { rx, chunk: Default::default() }
    }
}

impl std::io::Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.chunk.is_empty() {
            match self.rx.blocking_recv() {
                Some(c) => self.chunk = c,
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.chunk.len());
        buf[..n].copy_from_slice(&self.chunk.split_to(n));
        Ok(n)
    }
}

/// How long a bundle's download may go without a byte before it counts as
/// broken off (a master that lost power, a cut link: TCP alone would wait
/// for hours).
pub const STALL: std::time::Duration = std::time::Duration::from_secs(30);

/// Sends a response body's chunks to `tx` (a [`ChannelReader`]'s) until it
/// ends, the reader stops taking them, or nothing comes for `stall`: why it
/// broke off, if it did.
pub async fn pump<B>(
    mut body: B,
    tx: tokio::sync::mpsc::Sender<axum::body::Bytes>,
    stall: std::time::Duration,
) -> Result<(), String>
where
    B: hyper::body::Body<Data = axum::body::Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    use http_body_util::BodyExt as _;
    loop {
        let frame = match tokio::time::timeout(stall, body.frame()).await {
            Err(_) => return Err(format!("nothing came for {} s", stall.as_secs())),
            Ok(None) => return Ok(()),
            Ok(Some(Err(e))) => return Err(e.to_string()),
            Ok(Some(Ok(f))) => f,
        };
        if let Ok(data) = frame.into_data() {
            if tx.send(data).await.is_err() {
                return Ok(()); // the reader refused or is done
            }
        }
    }
}

/// A size for people: B, KiB, MiB or GiB.
pub fn size(bytes: u64) -> String {
    if bytes >= 1 << 30 {
        format!("{:.2} GiB", bytes as f64 / (1u64 << 30) as f64)
    } else if bytes >= 1 << 20 {
        format!("{:.1} MiB", bytes as f64 / (1u64 << 20) as f64)
    } else if bytes >= 1 << 10 {
        format!("{:.1} KiB", bytes as f64 / 1024.0)
    } else {
        format!("{bytes} B")
    }
}

/// Progress every 10% of `total` (known once the manifest is read), for a
/// person at a terminal.
pub fn tenths<'a>(total: &'a std::cell::Cell<u64>, progress: &'a Progress, what: &'static str) -> impl FnMut(u64) + 'a {
    let mut told = 0;
    move |done| {
        let tenth = (done * 10).checked_div(total.get()).unwrap_or(10);
        if tenth > told {
            told = tenth;
            progress.note(format!("  {what} {}% ({} of {})", tenth * 10, size(done), size(total.get())));
        }
    }
}

/// The free bytes of the filesystem `path` would be on (its nearest
/// existing ancestor's), and that ancestor.
fn free_space(path: &Path) -> anyhow::Result<(u64, PathBuf)> {
    let mut at = path.to_path_buf();
    while !at.exists() {
        if !at.pop() {
            anyhow::bail!("{}: no existing directory above it", path.display());
        }
    }
    let st = nix::sys::statvfs::statvfs(&at).with_context(|| format!("statvfs {}", at.display()))?;
    Ok((st.blocks_available() as u64 * st.fragment_size() as u64, at))
}

/// `install bundle=FILE`: the file is judged from its manifest first (its
/// architecture, its Kubernetes version, the room it needs) before anything
/// is written, then extracted under the data directory, once (a bundle
/// already there is used as it is). Returns the bundle directory. A failed
/// extraction leaves no directory it made.
pub fn unpack(paths: &Paths, file: &Path, key: Option<&Path>, progress: &Progress) -> anyhow::Result<PathBuf> {
    let key = key.map(PublicKey::load).transpose().map_err(anyhow::Error::msg)?;
    unpack_from(paths, file, bundle::open_file(file)?, key.as_ref(), progress)
}

/// As [`unpack`], from any reader (a master's stream): `name` names it.
pub fn unpack_from(
    paths: &Paths,
    name: &Path,
    r: impl std::io::Read,
    key: Option<&PublicKey>,
    progress: &Progress,
) -> anyhow::Result<PathBuf> {
    let dir = paths.bundles_dir();
    let total = std::cell::Cell::new(0);
    // Judged before anything is written: the version, and the room.
    let judge = |head: &bundle::Head| -> anyhow::Result<()> {
        let m = &head.manifest;
        total.set(m.total_size());
        let v = crate::kube::version::parse(&m.kubernetes_version).with_context(|| {
            format!("{}: its Kubernetes version {:?} is unreadable", name.display(), m.kubernetes_version)
        })?;
        crate::kube::version::check_supported(name, v)?;
        if head.signed {
            progress.note(format!("  {}: signed with the bundle key", name.display()));
        }
        if dir.join(head.id()).is_dir() {
            progress.note(format!("  {} is unpacked already in {}", name.display(), dir.join(head.id()).display()));
            return Ok(());
        }
        // The members, and the images once more: containerd keeps what it
        // imports, and unpacks the layers beside it.
        let need = m.total_size() + 2 * m.image_size();
        let (free, fs) = free_space(&dir)?;
        if free < need {
            anyhow::bail!(
                "{} needs {} free on the filesystem of {} ({} goes there: the bundle's {} and room to import its \
                 images), and it has {}: free space there, or mount a larger filesystem on {}",
                name.display(),
                size(need),
                fs.display(),
                dir.display(),
                size(m.total_size()),
                size(free),
                paths.data_dir().display()
            );
        }
        Ok(())
    };
    // The directories this makes, removed again if the unpacking fails.
    let made: Vec<PathBuf> = dir.ancestors().take_while(|d| !d.exists()).map(Path::to_path_buf).collect();
    let result = crate::host::fs::create_dir_all(&dir, 0o700)
        .map_err(anyhow::Error::from)
        .and_then(|()| bundle::extract(name, r, key, &dir, judge, tenths(&total, progress, "unpacked")));
    match result {
        Ok((target, _)) => Ok(target),
        Err(e) => {
            // Deepest first; remove_dir leaves a directory someone filled.
            for d in &made {
                let _ = std::fs::remove_dir(d);
            }
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Bytes;
    use http_body_util::StreamBody;

    type Frame = Result<hyper::body::Frame<Bytes>, std::convert::Infallible>;

    /// A body of `chunks`, then silence (a master gone without a word).
    fn stalling(chunks: &[&'static str]) -> StreamBody<impl futures_util::Stream<Item = Frame> + Unpin> {
        let frames: Vec<Frame> = chunks.iter().map(|c| Ok(hyper::body::Frame::data(Bytes::from(*c)))).collect();
        let head = futures_util::stream::iter(frames);
        StreamBody::new(futures_util::StreamExt::chain(head, futures_util::stream::pending()))
    }

    #[tokio::test(start_paused = true)]
    async fn a_download_that_goes_silent_breaks_off_after_the_stall_bound_with_what_came_passed_on() {
        let (tx, mut rx) = tokio::sync::mpsc::channel(8);
        let started = tokio::time::Instant::now();
        let r = pump(stalling(&["ab", "cd"]), tx, STALL).await;
        assert_eq!(r, Err("nothing came for 30 s".to_owned()));
        assert_eq!(started.elapsed(), STALL);
        assert_eq!((rx.recv().await.unwrap(), rx.recv().await.unwrap()), (Bytes::from("ab"), Bytes::from("cd")));
        assert_eq!(rx.recv().await, None, "the reader sees the end: its unpacking fails, nothing is kept");
    }

    #[tokio::test(start_paused = true)]
    async fn a_whole_download_ends_cleanly() {
        let (tx, mut rx) = tokio::sync::mpsc::channel(8);
        let body = StreamBody::new(futures_util::stream::iter(
            ["ab"].map(|c| Frame::Ok(hyper::body::Frame::data(Bytes::from(c)))),
        ));
        assert_eq!(pump(body, tx, STALL).await, Ok(()));
        assert_eq!(rx.recv().await, Some(Bytes::from("ab")));
        assert_eq!(rx.recv().await, None);
    }
}
