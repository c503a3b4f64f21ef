//! A JSON array written as the client reads it, a few records at a time: a page of 10,000
//! records is never one buffer, so a client that reads slowly holds one chunk of the
//! agent's memory, not the whole page (hyper asks for the next chunk only once the last
//! one was written).

use axum::body::Body;
use bytes::Bytes;
use serde::Serialize;

/// Records per chunk: about 100 KB of JSON.
const CHUNK: usize = 64;

/// `[a,b,…]` of `items`, each shown through `view` as it is written.
pub fn array<I, T, F>(items: Vec<I>, view: F) -> Body
where
    I: Send + 'static,
    T: Serialize,
    F: Fn(&I) -> T + Send + 'static,
{
    let chunks = futures::stream::unfold((items, 0usize, view), |(items, at, view)| async move {
        if at > items.len() {
            return None;
        }
        let mut out = Vec::with_capacity(16 * 1024);
        if at == 0 {
            out.push(b'[');
        }
        let end = (at + CHUNK).min(items.len());
        for (i, item) in items[at..end].iter().enumerate() {
            if at + i > 0 {
                out.push(b',');
            }
            if let Err(e) = serde_json::to_writer(&mut out, &view(item)) {
                return Some((Err(std::io::Error::other(e)), (items, usize::MAX, view)));
            }
        }
        if end == items.len() {
            out.push(b']');
        }
        // Past the end: the next poll ends the stream.
        let next = if end == items.len() { end + 1 } else { end };
        Some((Ok(Bytes::from(out)), (items, next, view)))
    });
    Body::from_stream(chunks)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt as _;

    async fn text(items: Vec<u32>) -> (String, usize) {
        let mut body = array(items, |n| n * 2);
        let (mut out, mut chunks) = (Vec::new(), 0);
        while let Some(frame) = body.frame().await {
            out.extend_from_slice(&frame.unwrap().into_data().unwrap());
            chunks += 1;
        }
        (String::from_utf8(out).unwrap(), chunks)
    }

    #[tokio::test]
    async fn arrays_of_any_length_are_valid_json_in_chunks() {
        assert_eq!(text(vec![]).await, ("[]".into(), 1));
        assert_eq!(text(vec![1]).await, ("[2]".into(), 1));
        let (s, chunks) = text((0..200).collect()).await;
        let back: Vec<u32> = serde_json::from_str(&s).unwrap();
        assert_eq!(back, (0..200).map(|n| n * 2).collect::<Vec<_>>());
        assert_eq!(chunks, 4, "64 records a chunk");
        let (s, chunks) = text((0..128).collect()).await;
        assert_eq!(serde_json::from_str::<Vec<u32>>(&s).unwrap().len(), 128);
        assert_eq!(chunks, 2);
    }
}
