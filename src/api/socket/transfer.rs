//! Moving file content between a client and a sandbox: ranges read and written in pieces
//! that fit the supervisor's frames, uploads streamed into a new file renamed over the old one
//! when whole, downloads read ahead, and the workspace's archive. Nothing here holds a file
//! whole in memory.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use futures_util::stream::FuturesUnordered;
use futures_util::{Stream, StreamExt};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use super::SocketApi;
use super::workspace::hex_sha256;
use crate::api::error::{ApiError, ErrorCode};
use crate::session::{CommandSpec, FileRequest, OutputStream};
use sandpool_supervisor::layout::{HOME, PATH, WORKSPACE};
use sandpool_supervisor::proto::{Done, FileData, Written};

/// File content per supervisor request: well under its 4 MiB frame.
pub(crate) const PIECE_BYTES: usize = 1 << 20;
/// Pieces of one transfer in flight at once.
const PIPELINE: usize = 4;
/// How long an archive's `tar` may run.
const ARCHIVE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(600);

impl SocketApi {
    /// Up to `len` bytes of file `rel` from `offset`, and the file's size.
    pub(crate) async fn read_range(
        &self,
        session_id: &str,
        rel: &str,
        offset: u64,
        len: usize,
    ) -> Result<(u64, Vec<u8>), ApiError> {
        let mut out = Vec::new();
        loop {
            let want = (len - out.len()).min(PIECE_BYTES);
            let request = FileRequest::Read {
                path: rel.into(),
                offset: offset + out.len() as u64,
                max_bytes: want as u64,
            };
            let (head, data) = self
                .file::<FileData>(session_id, request, Vec::new())
                .await?;
            let got = data.len();
            out.extend_from_slice(&data);
            if got < want || out.len() >= len {
                return Ok((head.size.max(out.len() as u64), out));
            }
        }
    }

    /// Writes `data` into file `rel` at `offset` (without truncating), in pieces; missing
    /// parent directories are made.
    pub(crate) async fn write_at(
        &self,
        session_id: &str,
        rel: &str,
        offset: u64,
        data: Bytes,
        mode: Option<u32>,
    ) -> Result<(), ApiError> {
        let mut at = 0;
        loop {
            let end = (at + PIECE_BYTES).min(data.len());
            let request = FileRequest::Write {
                path: rel.into(),
                append: false,
                mode,
                offset: Some(offset + at as u64),
                parents: at == 0,
            };
            self.file::<Written>(session_id, request, data[at..end].to_vec())
                .await?;
            at = end;
            if at >= data.len() {
                return Ok(());
            }
        }
    }

    /// Replaces file `rel` with the bytes of `body`, all or nothing: they go to a new file
    /// beside it, several pieces in flight, which is renamed over `rel` once whole. Missing
    /// parent directories are made. Returns the size and the SHA-256 (hex).
    pub(crate) async fn upload<S, E>(
        &self,
        session_id: &str,
        rel: &str,
        mode: Option<u32>,
        mut body: S,
    ) -> Result<(u64, String), ApiError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        if rel.is_empty() {
            return Err(ApiError::bad_request("the workspace itself is not a file"));
        }
        let max = self.limits.file_max_bytes as u64;
        let (dir, name) = rel.rsplit_once('/').unwrap_or(("", rel));
        let mut tag = [0u8; 6];
        let _ = getrandom::fill(&mut tag);
        let temp = format!(
            "{}{}.{name}.sandpool-upload-{}",
            dir,
            if dir.is_empty() { "" } else { "/" },
            hex::encode(tag)
        );
        let result = async {
            let mut hasher = Sha256::new();
            let mut buf = BytesMut::new();
            let (mut total, mut offset) = (0u64, 0u64);
            let mut in_flight = FuturesUnordered::new();
            let mut ended = false;
            // The first piece makes the file (and its parents) before any other is sent.
            let mut first = true;
            loop {
                // Send every whole piece there is room for (the rest of the body at its end).
                while in_flight.len() < PIPELINE
                    && (buf.len() >= PIECE_BYTES || (ended && (!buf.is_empty() || first)))
                {
                    let piece = buf.split_to(buf.len().min(PIECE_BYTES)).to_vec();
                    let request = FileRequest::Write {
                        path: temp.clone(),
                        append: false,
                        mode,
                        offset: Some(offset),
                        parents: first,
                    };
                    offset += piece.len() as u64;
                    if first {
                        first = false;
                        self.file::<Written>(session_id, request, piece).await?;
                    } else {
                        in_flight.push(self.file::<Written>(session_id, request, piece));
                    }
                }
                if ended && buf.is_empty() && !first {
                    break;
                }
                // Pieces in flight complete while the body is read.
                tokio::select! {
                    Some(done) = in_flight.next(), if !in_flight.is_empty() => {
                        done?;
                    }
                    chunk = body.next(), if !ended && buf.len() < 2 * PIECE_BYTES => match chunk {
                        Some(Ok(chunk)) => {
                            total += chunk.len() as u64;
                            if total > max {
                                return Err(ApiError::new(
                                    ErrorCode::TooLarge,
                                    format!("the file is over SANDPOOL_FILE_MAX_BYTES ({max} bytes)"),
                                ));
                            }
                            hasher.update(&chunk);
                            buf.extend_from_slice(&chunk);
                        }
                        Some(Err(e)) => {
                            return Err(ApiError::bad_request(format!("the upload broke off: {e}")));
                        }
                        None => ended = true,
                    },
                }
            }
            while let Some(done) = in_flight.next().await {
                done?;
            }
            let rename = FileRequest::Rename {
                from: temp.clone(),
                to: rel.into(),
            };
            self.file::<Done>(session_id, rename, Vec::new()).await?;
            self.metrics.file_bytes("upload", total);
            Ok((total, hex_sha256(hasher.finalize())))
        }
        .await;
        if result.is_err() {
            let delete = FileRequest::Delete {
                path: temp,
                recursive: false,
            };
            let _ = self.file::<Done>(session_id, delete, Vec::new()).await;
        }
        result
    }

    /// Removes `rel` (a directory only with `recursive`).
    pub(crate) async fn delete(
        &self,
        session_id: &str,
        rel: &str,
        recursive: bool,
    ) -> Result<(), ApiError> {
        if rel.is_empty() {
            return Err(ApiError::bad_request(
                "the workspace itself cannot be deleted",
            ));
        }
        let request = FileRequest::Delete {
            path: rel.into(),
            recursive,
        };
        self.file::<Done>(session_id, request, Vec::new()).await?;
        Ok(())
    }

    /// File `rel` of `size` bytes as a stream of pieces, several read ahead. A file that
    /// shrinks meanwhile ends the stream with an error (the client sees a cut transfer, never
    /// a short file passed off as whole).
    pub(crate) fn download(
        self: &Arc<Self>,
        session_id: &str,
        rel: &str,
        size: u64,
    ) -> impl Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static {
        let pieces = size.div_ceil(PIECE_BYTES as u64);
        let (api, session_id, rel) = (Arc::clone(self), session_id.to_string(), rel.to_string());
        futures_util::stream::iter(0..pieces)
            .map(move |i| {
                let (api, session_id, rel) = (Arc::clone(&api), session_id.clone(), rel.clone());
                async move {
                    let offset = i * PIECE_BYTES as u64;
                    let want = (size - offset).min(PIECE_BYTES as u64) as usize;
                    let request = FileRequest::Read {
                        path: rel,
                        offset,
                        max_bytes: want as u64,
                    };
                    let (_, data) = api
                        .file::<FileData>(&session_id, request, Vec::new())
                        .await
                        .map_err(|e| std::io::Error::other(e.message))?;
                    if data.len() != want {
                        return Err(std::io::Error::other("the file changed while it was read"));
                    }
                    api.metrics.file_bytes("download", want as u64);
                    Ok(Bytes::from(data))
                }
            })
            .buffered(PIPELINE)
    }

    /// A tar of the whole workspace, streamed as `tar` in the sandbox writes it (as the
    /// tenant: what the tenant can read). The command takes one of the session's command
    /// places. A `tar` that fails ends the stream with an error.
    pub(crate) fn archive(
        self: &Arc<Self>,
        session_id: &str,
    ) -> Result<impl Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static, ApiError> {
        let permit = self
            .sessions
            .command_permit(session_id)
            .map_err(|e| ApiError::from(&e))?;
        let (tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(4);
        let (api, session_id) = (Arc::clone(self), session_id.to_string());
        tokio::spawn(async move {
            let spec = CommandSpec {
                argv: ["tar", "-C", WORKSPACE, "-cf", "-", "."]
                    .map(String::from)
                    .to_vec(),
                env: vec![format!("HOME={HOME}"), format!("PATH={PATH}")],
                cwd: WORKSPACE.into(),
                timeout: ARCHIVE_TIMEOUT,
                output_limit: usize::MAX,
                retain_output: false,
                stdin: Vec::new(),
                checkpoint: None,
            };
            let (chunks_tx, mut chunks) = mpsc::channel::<crate::session::OutputChunk>(16);
            let run = {
                let api = Arc::clone(&api);
                async move {
                    let result = api
                        .sessions
                        .run_spec(&session_id, &spec, Some(&chunks_tx))
                        .await;
                    drop(chunks_tx);
                    result
                }
            };
            let forward = async {
                let mut client_gone = false;
                while let Some(chunk) = chunks.recv().await {
                    // A client that left stops being fed; the output is drained so that
                    // the command ends by itself.
                    if !client_gone
                        && chunk.stream == OutputStream::Stdout
                        && tx.send(Ok(chunk.data)).await.is_err()
                    {
                        client_gone = true;
                    }
                }
            };
            let (result, ()) = tokio::join!(run, forward);
            drop(permit);
            let failure = match result {
                Ok(out) if out.exit_code == Some(0) => None,
                Ok(out) => Some(format!(
                    "tar failed: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                )),
                Err(e) => Some(e.to_string()),
            };
            if let Some(why) = failure {
                let _ = tx.send(Err(std::io::Error::other(why))).await;
            }
        });
        Ok(tokio_stream_from(rx))
    }
}

/// A stream of what a channel receives.
fn tokio_stream_from<T: Send + 'static>(
    mut rx: mpsc::Receiver<T>,
) -> impl Stream<Item = T> + Send + 'static {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}
