//! Response body filters: what plugins that edit a response body put in its way.

use bytes::Bytes;

use crate::reply::Reply;

/// One response body's filter, made by [`crate::Plugin::body_filter`] for that response
/// alone, so it keeps whatever state it needs (held bytes, a look-back) in itself.
pub trait BodyFilter: Send {
    /// Sees each piece of the body as it passes and may change it in place: edit it, empty
    /// it to hold it back, or add to it what it held. The last call has `end` set and often
    /// an empty piece: whatever the filter still holds must go out then.
    fn filter(&mut self, piece: &mut Vec<u8>, end: bool);

    /// Whether it applies a content coding (gzip, brotli): such filters come after every
    /// other, which see the body as it was written.
    fn encodes(&self) -> bool {
        false
    }
}

/// The filters of one response, in the order the plugins run: each sees what the one
/// before it let through. Empty for almost every response, and then the body is relayed
/// as it is, framing and all.
#[derive(Default)]
pub struct BodyFilters(Vec<Box<dyn BodyFilter>>);

impl BodyFilters {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Adds a filter after the others, and before any that encodes.
    pub fn push(&mut self, filter: Box<dyn BodyFilter>) {
        let at = if filter.encodes() {
            self.0.len()
        } else {
            self.0
                .iter()
                .position(|f| f.encodes())
                .unwrap_or(self.0.len())
        };
        self.0.insert(at, filter);
    }

    /// Runs a piece of the body through every filter.
    pub fn run(&mut self, piece: &mut Vec<u8>, end: bool) {
        for filter in &mut self.0 {
            filter.filter(piece, end);
        }
    }

    /// A whole body (a plugin's reply, a replaced body) through the filters, as one piece
    /// followed by the end; without filters, the body as it is, uncopied.
    pub fn run_whole(&mut self, body: Bytes) -> Bytes {
        if self.is_empty() {
            return body;
        }
        let mut whole = Vec::from(body);
        self.run(&mut whole, false);
        let mut rest = Vec::new();
        self.run(&mut rest, true);
        whole.extend_from_slice(&rest);
        Bytes::from(whole)
    }
}

/// Looks at the start of a request's body before any of it goes upstream: the gateway holds
/// up to [`RequestBodyInspector::limit`] bytes of it (decoded from its framing) and hands them
/// over as they arrive; the request goes on only once they have passed.
pub trait RequestBodyInspector: Send {
    /// How much of the body it looks at, in bytes: what the gateway holds at most.
    fn limit(&self) -> usize;

    /// The next piece of the body. `Some(reply)` refuses the request: nothing of it goes
    /// upstream, and the client gets the reply.
    fn inspect(&mut self, piece: &[u8]) -> Option<Reply>;

    /// No more pieces: the body ended (`whole`), or the limit was reached with more to come.
    fn finish(&mut self, whole: bool) -> Option<Reply>;
}

/// The inspectors of one request, in the order the plugins run. Empty for almost every
/// request, and then nothing of the body is held.
#[derive(Default)]
pub struct RequestBodyInspectors(Vec<Box<dyn RequestBodyInspector>>);

impl RequestBodyInspectors {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn push(&mut self, inspector: Box<dyn RequestBodyInspector>) {
        self.0.push(inspector);
    }

    /// How much of the body to hold: what the most demanding inspector looks at.
    pub fn limit(&self) -> usize {
        self.0.iter().map(|i| i.limit()).max().unwrap_or(0)
    }

    /// The next piece, to every inspector whose limit it is within; the first refusal wins.
    /// `offset`: how much of the body came before the piece.
    pub fn inspect(&mut self, offset: usize, piece: &[u8]) -> Option<Reply> {
        self.0.iter_mut().find_map(|inspector| {
            let wanted = inspector.limit().saturating_sub(offset).min(piece.len());
            (wanted > 0)
                .then(|| inspector.inspect(&piece[..wanted]))
                .flatten()
        })
    }

    /// The end of what is held: `held` bytes, which are the whole body when it `ended`
    /// there. An inspector saw the whole body if it ended within its limit.
    pub fn finish(&mut self, held: usize, ended: bool) -> Option<Reply> {
        self.0.iter_mut().find_map(|inspector| {
            let whole = ended && held <= inspector.limit();
            inspector.finish(whole)
        })
    }
}

/// Sees a copy of a request's body as it goes upstream, without holding any of it up: made by
/// [`crate::Plugin::tap_request`] for that request alone. What it does with a piece (queue it
/// for a mirror, say) must not wait: the upstream gets the piece at once either way.
pub trait RequestTap: Send {
    /// The next piece of the body, decoded from its framing.
    fn piece(&mut self, piece: &[u8]);

    /// The body ended, whole. A tap dropped without this saw a body cut short.
    fn end(&mut self);
}

/// The taps of one request. Empty for almost every request, and then the body is relayed
/// untouched.
#[derive(Default)]
pub struct RequestTaps(Vec<Box<dyn RequestTap>>);

impl RequestTaps {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn push(&mut self, tap: Box<dyn RequestTap>) {
        self.0.push(tap);
    }

    pub fn piece(&mut self, piece: &[u8]) {
        if piece.is_empty() {
            return;
        }
        for tap in &mut self.0 {
            tap.piece(piece);
        }
    }

    /// The body ended whole: each tap is told, once.
    pub fn end(&mut self) {
        for mut tap in self.0.drain(..) {
            tap.end();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Holds everything, then lets it out upper-cased at the end.
    #[derive(Default)]
    struct ShoutAtEnd(Vec<u8>);

    impl BodyFilter for ShoutAtEnd {
        fn filter(&mut self, piece: &mut Vec<u8>, end: bool) {
            self.0.append(piece);
            if end {
                *piece = self.0.to_ascii_uppercase();
            }
        }
    }

    /// Doubles every byte as it passes.
    struct Stutter;

    impl BodyFilter for Stutter {
        fn filter(&mut self, piece: &mut Vec<u8>, _end: bool) {
            *piece = piece.iter().flat_map(|&b| [b, b]).collect();
        }
    }

    #[test]
    fn each_filter_sees_what_the_one_before_let_through() {
        let mut filters = BodyFilters::default();
        filters.push(Box::new(ShoutAtEnd::default()));
        filters.push(Box::new(Stutter));
        let mut out = Vec::new();
        for (piece, end) in [(&b"ab"[..], false), (b"c", false), (b"", true)] {
            let mut piece = piece.to_vec();
            filters.run(&mut piece, end);
            out.extend_from_slice(&piece);
        }
        assert_eq!(out, b"AABBCC");
    }

    #[test]
    fn a_whole_body_goes_through_as_one_piece_and_an_end() {
        let mut filters = BodyFilters::default();
        filters.push(Box::new(ShoutAtEnd::default()));
        assert_eq!(
            filters.run_whole(Bytes::from_static(b"whole")),
            &b"WHOLE"[..]
        );
        let body = Bytes::from_static(b"as is");
        let same = BodyFilters::default().run_whole(body.clone());
        assert_eq!(same.as_ptr(), body.as_ptr(), "no filters, no copy");
    }
}
