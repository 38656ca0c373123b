//! Lets gRPC clients that send a unix socket path as the HTTP/2 `:authority`
//! talk to the server. grpc-go dialled with a bare socket path does that (the
//! upstream kubelet up to 1.25 and crictl of that time send e.g.
//! `/run/cri-shim.sock`), and h2, under tonic, answers every such request with
//! `RST_STREAM(PROTOCOL_ERROR)` before any service sees it, because a `/` is
//! not allowed in a URI authority.
//!
//! [`AuthorityRepair`] sits between an accepted connection and the HTTP/2
//! server. It passes the client's frames through, except its header blocks
//! (HEADERS and their CONTINUATION frames): those it decodes with the
//! connection's HPACK state, replaces an `:authority` that is not a valid URI
//! authority with `localhost` (what newer clients send on unix sockets), and
//! encodes again as literals without indexing. The server's direction is not
//! touched.
//!
//! Invariant: every header block the server sees was encoded here, and none
//! uses the HPACK dynamic table; so the server's table stays empty and cannot
//! disagree with the client's, which only this module's decoder follows.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use loona_hpack::decoder::DecoderError;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::codegen::http::uri::Authority;

/// What a client sends first on an HTTP/2 connection (RFC 9113 §3.4).
const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const FRAME_HEADER_LEN: usize = 9;
const FRAME_HEADERS: u8 = 0x1;
const FRAME_CONTINUATION: u8 = 0x9;
const FLAG_END_STREAM: u8 = 0x1;
const FLAG_END_HEADERS: u8 = 0x4;
const FLAG_PADDED: u8 = 0x8;
const FLAG_PRIORITY: u8 = 0x20;
/// The largest frame payload every HTTP/2 peer must accept
/// (`SETTINGS_MAX_FRAME_SIZE` can only raise it); re-encoded header blocks
/// are cut into frames of at most this size.
const MIN_MAX_FRAME_SIZE: usize = 16_384;
/// A header block larger than this is refused (h2 allows 16 KiB of headers
/// by default; this is only a bound on what is buffered here).
const MAX_HEADER_BLOCK: usize = 1 << 20;
/// What replaces an invalid `:authority`.
const LOCAL_AUTHORITY: &[u8] = b"localhost";

/// A client's HTTP/2 stream that the server cannot accept.
#[derive(Debug, thiserror::Error)]
pub enum AuthorityRepairError {
    /// The header block could not be HPACK-decoded.
    #[error("stream {stream_id}: undecodable header block: {source}")]
    Hpack {
        /// HTTP/2 stream of the block.
        stream_id: u32,
        /// What the decoder found.
        #[source]
        source: DecoderError,
    },
    /// Another frame came between a HEADERS frame and its last CONTINUATION.
    #[error("stream {stream_id}: frame of type {frame_type:#x} inside a header block")]
    InterleavedFrame {
        /// HTTP/2 stream of the open header block.
        stream_id: u32,
        /// Type of the offending frame.
        frame_type: u8,
    },
    /// A CONTINUATION frame without an open header block.
    #[error("stream {stream_id}: CONTINUATION without HEADERS")]
    StrayContinuation {
        /// HTTP/2 stream of the frame.
        stream_id: u32,
    },
    /// The padding or priority fields do not fit in the HEADERS frame.
    #[error("stream {stream_id}: malformed HEADERS frame")]
    MalformedHeaders {
        /// HTTP/2 stream of the frame.
        stream_id: u32,
    },
    /// The header block is larger than [`MAX_HEADER_BLOCK`].
    #[error("stream {stream_id}: header block larger than {MAX_HEADER_BLOCK} bytes")]
    HeaderBlockTooLarge {
        /// HTTP/2 stream of the block.
        stream_id: u32,
    },
}

/// A header block being collected from a HEADERS frame and its CONTINUATIONs.
#[derive(Debug)]
struct OpenBlock {
    stream_id: u32,
    end_stream: bool,
    /// Stream dependency and weight, when the HEADERS frame carried them.
    priority: Option<[u8; 5]>,
    fragment: Vec<u8>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for the client preface.
    Preface,
    /// Between frames of an HTTP/2 connection.
    Frames,
    /// Not HTTP/2: everything passes unchanged.
    Passthrough,
}

/// The client-to-server byte filter, without I/O: [`Self::feed`] takes what
/// arrived and appends what the server gets.
pub struct FrameFilter {
    phase: Phase,
    decoder: loona_hpack::Decoder<'static>,
    open: Option<OpenBlock>,
}

impl std::fmt::Debug for FrameFilter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrameFilter")
            .field("phase", &self.phase)
            .field("open", &self.open)
            .finish_non_exhaustive()
    }
}

impl Default for FrameFilter {
    fn default() -> Self {
        Self {
            phase: Phase::Preface,
            decoder: loona_hpack::Decoder::new(),
            open: None,
        }
    }
}

impl FrameFilter {
    /// Consumes the complete units (preface, frames) at the front of `input`
    /// and appends their filtered form to `output`; an incomplete frame stays
    /// in `input` for the next call.
    pub fn feed(
        &mut self,
        input: &mut Vec<u8>,
        output: &mut Vec<u8>,
    ) -> Result<(), AuthorityRepairError> {
        let mut consumed = 0;
        let result = self.feed_inner(input, &mut consumed, output);
        input.drain(..consumed);
        result
    }

    fn feed_inner(
        &mut self,
        input: &[u8],
        consumed: &mut usize,
        output: &mut Vec<u8>,
    ) -> Result<(), AuthorityRepairError> {
        loop {
            let rest = &input[*consumed..];
            match self.phase {
                Phase::Passthrough => {
                    output.extend_from_slice(rest);
                    *consumed = input.len();
                    return Ok(());
                }
                Phase::Preface => {
                    let n = rest.len().min(PREFACE.len());
                    if rest[..n] != PREFACE[..n] {
                        self.phase = Phase::Passthrough;
                        continue;
                    }
                    if n < PREFACE.len() {
                        return Ok(());
                    }
                    output.extend_from_slice(PREFACE);
                    *consumed += PREFACE.len();
                    self.phase = Phase::Frames;
                }
                Phase::Frames => {
                    if rest.len() < FRAME_HEADER_LEN {
                        return Ok(());
                    }
                    let length = usize::from(rest[0]) << 16
                        | usize::from(rest[1]) << 8
                        | usize::from(rest[2]);
                    if rest.len() < FRAME_HEADER_LEN + length {
                        return Ok(());
                    }
                    let frame = &rest[..FRAME_HEADER_LEN + length];
                    *consumed += frame.len();
                    self.frame(frame, output)?;
                }
            }
        }
    }

    /// One whole frame: header blocks are collected and rewritten, every
    /// other frame passes.
    fn frame(&mut self, frame: &[u8], output: &mut Vec<u8>) -> Result<(), AuthorityRepairError> {
        let frame_type = frame[3];
        let flags = frame[4];
        let stream_id = u32::from_be_bytes([frame[5], frame[6], frame[7], frame[8]]) & 0x7fff_ffff;
        let payload = &frame[FRAME_HEADER_LEN..];
        match (frame_type, &mut self.open) {
            (FRAME_HEADERS, None) => {
                let mut fragment = payload;
                let mut padding = 0;
                if flags & FLAG_PADDED != 0 {
                    let (&pad, rest) = fragment
                        .split_first()
                        .ok_or(AuthorityRepairError::MalformedHeaders { stream_id })?;
                    padding = usize::from(pad);
                    fragment = rest;
                }
                let mut priority = None;
                if flags & FLAG_PRIORITY != 0 {
                    let (fields, rest) = fragment
                        .split_first_chunk::<5>()
                        .ok_or(AuthorityRepairError::MalformedHeaders { stream_id })?;
                    priority = Some(*fields);
                    fragment = rest;
                }
                if padding > fragment.len() {
                    return Err(AuthorityRepairError::MalformedHeaders { stream_id });
                }
                let fragment = &fragment[..fragment.len() - padding];
                self.open = Some(OpenBlock {
                    stream_id,
                    end_stream: flags & FLAG_END_STREAM != 0,
                    priority,
                    fragment: fragment.to_vec(),
                });
            }
            (FRAME_CONTINUATION, Some(open)) if open.stream_id == stream_id => {
                if open.fragment.len() + payload.len() > MAX_HEADER_BLOCK {
                    return Err(AuthorityRepairError::HeaderBlockTooLarge { stream_id });
                }
                open.fragment.extend_from_slice(payload);
            }
            (FRAME_CONTINUATION, None) => {
                return Err(AuthorityRepairError::StrayContinuation { stream_id });
            }
            (_, Some(open)) => {
                return Err(AuthorityRepairError::InterleavedFrame {
                    stream_id: open.stream_id,
                    frame_type,
                });
            }
            (_, None) => {
                output.extend_from_slice(frame);
                return Ok(());
            }
        }
        if flags & FLAG_END_HEADERS != 0
            && let Some(block) = self.open.take()
        {
            self.emit_block(block, output)?;
        }
        Ok(())
    }

    /// Decodes a complete header block, repairs `:authority`, and writes it
    /// as HEADERS (+ CONTINUATION) frames of literals without indexing.
    fn emit_block(
        &mut self,
        block: OpenBlock,
        output: &mut Vec<u8>,
    ) -> Result<(), AuthorityRepairError> {
        let stream_id = block.stream_id;
        let headers = self
            .decoder
            .decode(&block.fragment)
            .map_err(|source| AuthorityRepairError::Hpack { stream_id, source })?;
        let mut encoded = Vec::with_capacity(block.fragment.len() * 2);
        for (name, value) in &headers {
            let value = if name == b":authority" && Authority::try_from(value.as_slice()).is_err() {
                tracing::debug!(
                    stream.id = stream_id,
                    authority = %String::from_utf8_lossy(value),
                    "replacing an invalid HTTP/2 :authority with localhost"
                );
                LOCAL_AUTHORITY
            } else {
                value.as_slice()
            };
            encode_literal(name, value, &mut encoded);
        }

        let priority_len = if block.priority.is_some() { 5 } else { 0 };
        let first_len = encoded.len().min(MIN_MAX_FRAME_SIZE - priority_len);
        let (first, mut rest) = encoded.split_at(first_len);
        let mut flags = 0;
        if block.end_stream {
            flags |= FLAG_END_STREAM;
        }
        if rest.is_empty() {
            flags |= FLAG_END_HEADERS;
        }
        if block.priority.is_some() {
            flags |= FLAG_PRIORITY;
        }
        write_frame_header(
            output,
            priority_len + first.len(),
            FRAME_HEADERS,
            flags,
            stream_id,
        );
        if let Some(priority) = block.priority {
            output.extend_from_slice(&priority);
        }
        output.extend_from_slice(first);
        while !rest.is_empty() {
            let (chunk, tail) = rest.split_at(rest.len().min(MIN_MAX_FRAME_SIZE));
            let flags = if tail.is_empty() { FLAG_END_HEADERS } else { 0 };
            write_frame_header(output, chunk.len(), FRAME_CONTINUATION, flags, stream_id);
            output.extend_from_slice(chunk);
            rest = tail;
        }
        Ok(())
    }
}

fn write_frame_header(output: &mut Vec<u8>, length: usize, frame_type: u8, flags: u8, stream: u32) {
    let length = u32::try_from(length).expect("frame length below 2^24");
    output.extend_from_slice(&length.to_be_bytes()[1..]);
    output.push(frame_type);
    output.push(flags);
    output.extend_from_slice(&stream.to_be_bytes());
}

/// HPACK "literal header field without indexing, new name" (RFC 7541
/// §6.2.2), both strings raw (no Huffman coding).
fn encode_literal(name: &[u8], value: &[u8], output: &mut Vec<u8>) {
    output.push(0x00);
    for string in [name, value] {
        loona_hpack::encoder::encode_integer_into(string.len(), 7, 0, output)
            .expect("writing to a Vec cannot fail");
        output.extend_from_slice(string);
    }
}

/// A connection whose client-to-server bytes go through a [`FrameFilter`].
#[derive(Debug)]
pub struct AuthorityRepair<S> {
    inner: S,
    filter: FrameFilter,
    /// Received from the client, not yet filtered (an incomplete frame).
    input: Vec<u8>,
    /// Filtered, not yet read by the server.
    output: Vec<u8>,
    output_pos: usize,
    eof: bool,
}

impl<S> AuthorityRepair<S> {
    /// Wraps an accepted connection.
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            filter: FrameFilter::default(),
            input: Vec::new(),
            output: Vec::new(),
            output_pos: 0,
            eof: false,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for AuthorityRepair<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            let pending = &this.output[this.output_pos..];
            if !pending.is_empty() {
                let n = pending.len().min(buf.remaining());
                buf.put_slice(&pending[..n]);
                this.output_pos += n;
                if this.output_pos == this.output.len() {
                    this.output.clear();
                    this.output_pos = 0;
                }
                return Poll::Ready(Ok(()));
            }
            if this.eof {
                return Poll::Ready(Ok(()));
            }
            let mut chunk = [0u8; 16 * 1024];
            let mut chunk_buf = ReadBuf::new(&mut chunk);
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut chunk_buf))?;
            let received = chunk_buf.filled();
            if received.is_empty() {
                // The client closed: hand over an incomplete frame as it is,
                // for the server to see the truncation.
                this.eof = true;
                this.output.append(&mut this.input);
                continue;
            }
            this.input.extend_from_slice(received);
            this.filter
                .feed(&mut this.input, &mut this.output)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for AuthorityRepair<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

impl<S: tonic::transport::server::Connected> tonic::transport::server::Connected
    for AuthorityRepair<S>
{
    type ConnectInfo = S::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Headers = Vec<(Vec<u8>, Vec<u8>)>;
    /// A frame as the server sees it: type, flags, stream, and the decoded
    /// header block or else the raw payload.
    type SeenFrame = (u8, u8, u32, Result<Headers, Vec<u8>>);

    fn frame(frame_type: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        write_frame_header(&mut out, payload.len(), frame_type, flags, stream);
        out.extend_from_slice(payload);
        out
    }

    fn request(authority: &str, path: &str) -> Vec<(&'static [u8], Vec<u8>)> {
        vec![
            (b":method", b"POST".to_vec()),
            (b":scheme", b"http".to_vec()),
            (b":path", path.as_bytes().to_vec()),
            (b":authority", authority.as_bytes().to_vec()),
            (b"content-type", b"application/grpc".to_vec()),
            (b"te", b"trailers".to_vec()),
        ]
    }

    /// What the server side sees: the frames after the preface, with each
    /// header block decoded by a fresh decoder (so a block that relied on a
    /// dynamic table the server never saw would fail), and other frames raw.
    fn server_view(bytes: &[u8]) -> Vec<SeenFrame> {
        assert_eq!(&bytes[..PREFACE.len()], PREFACE);
        let mut decoder = loona_hpack::Decoder::new();
        let mut rest = &bytes[PREFACE.len()..];
        let mut frames = Vec::new();
        let mut block: Option<(u8, u32, Vec<u8>)> = None;
        while !rest.is_empty() {
            let len = usize::from(rest[0]) << 16 | usize::from(rest[1]) << 8 | usize::from(rest[2]);
            let (frame_type, flags) = (rest[3], rest[4]);
            let stream = u32::from_be_bytes([rest[5], rest[6], rest[7], rest[8]]);
            let payload = &rest[9..9 + len];
            rest = &rest[9 + len..];
            let fragment = match frame_type {
                FRAME_HEADERS => {
                    assert_eq!(flags & FLAG_PADDED, 0, "re-encoded blocks are not padded");
                    let skip = if flags & FLAG_PRIORITY != 0 { 5 } else { 0 };
                    block = Some((flags, stream, payload[skip..].to_vec()));
                    None
                }
                FRAME_CONTINUATION => {
                    block.as_mut().unwrap().2.extend_from_slice(payload);
                    None
                }
                _ => Some(payload.to_vec()),
            };
            if let Some(raw) = fragment {
                frames.push((frame_type, flags, stream, Err(raw)));
            } else if flags & FLAG_END_HEADERS != 0 {
                let (first_flags, stream, fragment) = block.take().unwrap();
                assert_only_unindexed_literals(&fragment);
                let headers = decoder.decode(&fragment).expect("server-side decoding");
                frames.push((FRAME_HEADERS, first_flags, stream, Ok(headers)));
            }
        }
        frames
    }

    /// Every representation in `block` is a literal without indexing with a
    /// new name and raw strings: nothing touches the dynamic table.
    fn assert_only_unindexed_literals(block: &[u8]) {
        let mut pos = 0;
        while pos < block.len() {
            assert_eq!(block[pos], 0x00, "representation at {pos} of {block:?}");
            pos += 1;
            for _ in 0..2 {
                assert_eq!(block[pos] & 0x80, 0, "Huffman-coded string at {pos}");
                let mut len = usize::from(block[pos] & 0x7f);
                pos += 1;
                if len == 0x7f {
                    let mut shift = 0;
                    loop {
                        let byte = block[pos];
                        pos += 1;
                        len += usize::from(byte & 0x7f) << shift;
                        shift += 7;
                        if byte & 0x80 == 0 {
                            break;
                        }
                    }
                }
                pos += len;
            }
        }
        assert_eq!(pos, block.len());
    }

    fn value<'a>(headers: &'a Headers, name: &str) -> &'a [u8] {
        &headers
            .iter()
            .find(|(n, _)| n == name.as_bytes())
            .unwrap_or_else(|| panic!("no {name}"))
            .1
    }

    fn run(filter: &mut FrameFilter, input: &[u8]) -> Vec<u8> {
        let mut pending = input.to_vec();
        let mut output = Vec::new();
        filter.feed(&mut pending, &mut output).unwrap();
        assert!(pending.is_empty(), "left unconsumed: {pending:?}");
        output
    }

    #[test]
    fn socket_path_authority_becomes_localhost_and_the_rest_stays() {
        // A client encoder that indexes: the second request refers to the
        // first's entries in the dynamic table.
        let mut encoder = loona_hpack::Encoder::new();
        let mut input = PREFACE.to_vec();
        input.extend(frame(0x4, 0, 0, &[])); // SETTINGS
        for (stream, path) in [(1, "/runtime.v1alpha2.RuntimeService/Version"), (3, "/x/Y")] {
            let headers = request("/run/cri-shim.sock", path);
            let block = encoder.encode(headers.iter().map(|(n, v)| (*n, v.as_slice())));
            input.extend(frame(FRAME_HEADERS, FLAG_END_HEADERS, stream, &block));
            input.extend(frame(0x0, FLAG_END_STREAM, stream, b"\0\0\0\0\x02\x0a\x00"));
        }
        let output = run(&mut FrameFilter::default(), &input);
        let frames = server_view(&output);
        assert_eq!(frames.len(), 5, "{frames:?}");
        assert_eq!(frames[0].0, 0x4);
        for (i, (stream, path)) in [(1, "/runtime.v1alpha2.RuntimeService/Version"), (3, "/x/Y")]
            .into_iter()
            .enumerate()
        {
            let (frame_type, flags, id, headers) = &frames[1 + 2 * i];
            assert_eq!((*frame_type, *id), (FRAME_HEADERS, stream));
            assert_eq!(*flags, FLAG_END_HEADERS);
            let headers = headers.as_ref().unwrap();
            assert_eq!(value(headers, ":authority"), b"localhost");
            assert_eq!(value(headers, ":path"), path.as_bytes());
            assert_eq!(value(headers, "te"), b"trailers");
            assert_eq!(headers.len(), 6);
            let (frame_type, flags, _, data) = &frames[2 + 2 * i];
            assert_eq!((*frame_type, *flags), (0x0, FLAG_END_STREAM));
            assert_eq!(data.as_ref().unwrap_err(), b"\0\0\0\0\x02\x0a\x00");
        }
    }

    #[test]
    fn valid_authority_and_huffman_strings_decode_unchanged() {
        // RFC 7541 C.4.1: GET http://www.example.com/ with Huffman coding.
        let block = [
            0x82, 0x86, 0x84, 0x41, 0x8c, 0xf1, 0xe3, 0xc2, 0xe5, 0xf2, 0x3a, 0x6b, 0xa0, 0xab,
            0x90, 0xf4, 0xff,
        ];
        let mut input = PREFACE.to_vec();
        input.extend(frame(
            FRAME_HEADERS,
            FLAG_END_HEADERS | FLAG_END_STREAM,
            1,
            &block,
        ));
        let frames = server_view(&run(&mut FrameFilter::default(), &input));
        let headers = frames[0].3.as_ref().unwrap();
        assert_eq!(frames[0].1, FLAG_END_HEADERS | FLAG_END_STREAM);
        assert_eq!(value(headers, ":authority"), b"www.example.com");
        assert_eq!(value(headers, ":method"), b"GET");
    }

    #[test]
    fn padded_prioritised_block_in_continuations_is_reassembled() {
        let headers = request("/tmp/x/cri.sock", "/p");
        let block =
            loona_hpack::Encoder::new().encode(headers.iter().map(|(n, v)| (*n, v.as_slice())));
        let (a, b) = block.split_at(block.len() / 2);
        let mut payload = vec![3u8]; // pad length
        payload.extend_from_slice(&[0x80, 0, 0, 1, 15]); // exclusive dep on 1, weight 16
        payload.extend_from_slice(a);
        payload.extend_from_slice(&[0, 0, 0]);
        let mut input = PREFACE.to_vec();
        input.extend(frame(
            FRAME_HEADERS,
            FLAG_PADDED | FLAG_PRIORITY,
            5,
            &payload,
        ));
        input.extend(frame(FRAME_CONTINUATION, FLAG_END_HEADERS, 5, b));
        let output = run(&mut FrameFilter::default(), &input);
        // The priority fields are kept.
        assert_eq!(
            &output[PREFACE.len() + 9..PREFACE.len() + 14],
            &[0x80, 0, 0, 1, 15]
        );
        let frames = server_view(&output);
        assert_eq!(frames.len(), 1);
        assert_eq!(frames[0].1, FLAG_END_HEADERS | FLAG_PRIORITY);
        let headers = frames[0].3.as_ref().unwrap();
        assert_eq!(value(headers, ":authority"), b"localhost");
        assert_eq!(value(headers, ":path"), b"/p");
    }

    #[test]
    fn large_block_is_cut_into_continuations() {
        let big = "v".repeat(40_000);
        let headers: Vec<(&[u8], &[u8])> = vec![
            (b":method", b"POST"),
            (b":path", b"/p"),
            (b"x-big", big.as_bytes()),
        ];
        let block = loona_hpack::Encoder::new().encode(headers);
        let mut input = PREFACE.to_vec();
        for (i, chunk) in block.chunks(10_000).enumerate() {
            let frame_type = if i == 0 {
                FRAME_HEADERS
            } else {
                FRAME_CONTINUATION
            };
            let last = (i + 1) * 10_000 >= block.len();
            let flags = if last { FLAG_END_HEADERS } else { 0 };
            input.extend(frame(frame_type, flags, 1, chunk));
        }
        let output = run(&mut FrameFilter::default(), &input);
        let frames = server_view(&output);
        assert_eq!(
            value(frames[0].3.as_ref().unwrap(), "x-big"),
            big.as_bytes()
        );
    }

    #[test]
    fn input_in_small_pieces_gives_the_same_bytes() {
        let headers = request("/run/a.sock", "/p");
        let block =
            loona_hpack::Encoder::new().encode(headers.iter().map(|(n, v)| (*n, v.as_slice())));
        let mut input = PREFACE.to_vec();
        input.extend(frame(FRAME_HEADERS, FLAG_END_HEADERS, 1, &block));
        input.extend(frame(0x8, 0, 0, &[0, 0, 1, 0])); // WINDOW_UPDATE
        let whole = run(&mut FrameFilter::default(), &input);

        let mut filter = FrameFilter::default();
        let mut pending = Vec::new();
        let mut output = Vec::new();
        for byte in &input {
            pending.push(*byte);
            filter.feed(&mut pending, &mut output).unwrap();
        }
        assert!(pending.is_empty());
        assert_eq!(output, whole);
    }

    #[test]
    fn other_protocols_pass_unchanged() {
        let input = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
        assert_eq!(run(&mut FrameFilter::default(), input), input);
    }

    #[test]
    fn protocol_violations_are_errors() {
        let mut input = PREFACE.to_vec();
        input.extend(frame(FRAME_CONTINUATION, FLAG_END_HEADERS, 1, b""));
        let mut output = Vec::new();
        let err = FrameFilter::default()
            .feed(&mut input, &mut output)
            .unwrap_err();
        assert!(matches!(
            err,
            AuthorityRepairError::StrayContinuation { stream_id: 1 }
        ));

        let mut input = PREFACE.to_vec();
        input.extend(frame(FRAME_HEADERS, 0, 1, &[0x82]));
        input.extend(frame(0x0, 0, 1, b"data"));
        let err = FrameFilter::default()
            .feed(&mut input, &mut output)
            .unwrap_err();
        assert!(matches!(
            err,
            AuthorityRepairError::InterleavedFrame {
                stream_id: 1,
                frame_type: 0
            }
        ));

        let mut input = PREFACE.to_vec();
        input.extend(frame(
            FRAME_HEADERS,
            FLAG_PADDED | FLAG_END_HEADERS,
            1,
            &[9, 0x82],
        ));
        let err = FrameFilter::default()
            .feed(&mut input, &mut output)
            .unwrap_err();
        assert!(matches!(
            err,
            AuthorityRepairError::MalformedHeaders { stream_id: 1 }
        ));
    }

    #[tokio::test]
    async fn wrapped_stream_delivers_the_filtered_bytes() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut client, server) = tokio::io::duplex(64);
        let headers = request("/run/a.sock", "/p");
        let block =
            loona_hpack::Encoder::new().encode(headers.iter().map(|(n, v)| (*n, v.as_slice())));
        let mut input = PREFACE.to_vec();
        input.extend(frame(FRAME_HEADERS, FLAG_END_HEADERS, 1, &block));
        let expected = run(&mut FrameFilter::default(), &input);
        let writer = tokio::spawn(async move {
            client.write_all(&input).await.unwrap();
            client.shutdown().await.unwrap();
            client
        });
        let mut wrapped = AuthorityRepair::new(server);
        let mut received = Vec::new();
        wrapped.read_to_end(&mut received).await.unwrap();
        assert_eq!(received, expected);
        let mut client = writer.await.unwrap();
        wrapped.write_all(b"answer").await.unwrap();
        let mut answer = [0u8; 6];
        client.read_exact(&mut answer).await.unwrap();
        assert_eq!(&answer, b"answer");
    }
}
