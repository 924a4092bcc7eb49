//! The connection engine over an in-memory stream: a client writes frames byte for byte and
//! reads what comes back. Time is tokio's paused clock: timeouts pass without waiting, and a
//! sleep returns only once every task has done all it can.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream};
use tokio::sync::{mpsc, oneshot};

use pylon_frames::{
    Closed, CommandRoute, CounterValues, Counters, DispatchError, Dispatcher, Frame, FrameError,
    Layout, Protocol,
};

/// Commands: 4097 and 4098 have routes, 9 has none.
const SEND: u64 = 4097;
const PING: u64 = 4098;
const UNROUTED: u64 = 9;
/// The error frames' commands.
const ON_ERROR: u64 = 65535;
const ON_UNKNOWN: u64 = 65534;
/// An echo's command: the request's with the top bit set.
const ANSWER: u64 = 0x8000;
/// Longer than any test: a test that hangs fails at this (virtual) bound instead.
const BOUND: Duration = Duration::from_secs(3600);

/// HelloTalk's layout, error frames for bad frames and unknown commands, and `changes`.
fn protocol(changes: Value) -> Protocol {
    let mut conf = json!({
        "layout": {
            "start": "09", "end": "0a", "header_length": 20,
            "body_length": {"offset": 0, "width": 4},
            "command": {"offset": 4, "width": 2},
            "sequence": {"offset": 6, "width": 4},
            "fields": {"version": {"offset": 10, "width": 1}, "flags": {"offset": 11, "width": 1}}
        },
        "on_error": {"action": "error_frame", "command": ON_ERROR, "fields": {"version": 1}},
        "unknown_command": {"action": "error_frame", "command": ON_UNKNOWN},
        "commands": {
            "4097": {"uri": "/im/send", "proto_id": "im", "request": "im.SendReq", "response": "im.SendResp"},
            "4098": {"uri": "/im/ping"}
        }
    });
    for (key, value) in changes.as_object().unwrap() {
        if key == "layout" {
            for (key, value) in value.as_object().unwrap() {
                conf["layout"][key] = value.clone();
            }
        } else {
            conf[key] = value.clone();
        }
    }
    Protocol::from_json(&conf).unwrap()
}

fn frame(command: u64, sequence: u64, body: &'static str) -> Frame {
    Frame {
        command,
        sequence,
        body: Bytes::from_static(body.as_bytes()),
        ..Frame::default()
    }
}

/// Answers at once with the body echoed, or as the body says: `fail` fails, `close` closes
/// the connection, `wide` answers with a command too wide for the layout.
struct Echo;

impl Dispatcher for Echo {
    async fn dispatch(&self, _route: &CommandRoute, frame: Frame) -> Result<Frame, DispatchError> {
        tokio::task::yield_now().await;
        match &frame.body[..] {
            b"fail" => Err(DispatchError::Failed("the upstream answered 502".into())),
            b"close" => Err(DispatchError::Close("credentials refused".into())),
            b"wide" => Ok(Frame {
                command: 1 << 16,
                ..frame
            }),
            _ => Ok(Frame {
                command: frame.command | ANSWER,
                sequence: 0, // the engine writes the request's
                ..frame
            }),
        }
    }
}

/// Holds every call until the test releases it by sequence id.
#[derive(Default)]
struct Gated {
    waiting: RefCell<BTreeMap<u64, oneshot::Sender<Frame>>>,
    started: Cell<usize>,
}

impl Dispatcher for Gated {
    fn dispatch(
        &self,
        _route: &CommandRoute,
        frame: Frame,
    ) -> impl Future<Output = Result<Frame, DispatchError>> {
        let (release, released) = oneshot::channel();
        self.waiting.borrow_mut().insert(frame.sequence, release);
        self.started.set(self.started.get() + 1);
        async move {
            released
                .await
                .map_err(|_| DispatchError::Failed("dropped".into()))
        }
    }
}

impl Gated {
    /// Lets the call of `sequence` finish, answering with `sequence` as its body.
    fn release(&self, sequence: u64) {
        let release = self.waiting.borrow_mut().remove(&sequence).unwrap();
        let body = Bytes::from(sequence.to_string());
        release
            .send(Frame {
                command: ANSWER,
                body,
                ..Frame::default()
            })
            .unwrap();
    }
}

/// The test's end of the connection, or one half of it.
struct Client<IO = DuplexStream> {
    io: IO,
    read: BytesMut,
    layout: Layout,
}

impl<IO> Client<IO> {
    fn new(io: IO, protocol: &Protocol) -> Self {
        Self {
            io,
            read: BytesMut::new(),
            layout: protocol.layout().clone(),
        }
    }
}

impl<IO: AsyncWrite + Unpin> Client<IO> {
    async fn send(&mut self, frames: &[Frame]) {
        let mut bytes = BytesMut::new();
        for frame in frames {
            self.layout.encode(frame, &mut bytes).unwrap();
        }
        self.io.write_all(&bytes).await.unwrap();
    }

    async fn send_bytes(&mut self, bytes: &[u8]) {
        self.io.write_all(bytes).await.unwrap();
    }
}

impl<IO: AsyncRead + Unpin> Client<IO> {
    /// The next frame, or `None` when the connection closed.
    async fn recv(&mut self) -> Option<Frame> {
        loop {
            if let Some(frame) = self.layout.decode(&mut self.read).unwrap() {
                return Some(frame);
            }
            if self.io.read_buf(&mut self.read).await.unwrap() == 0 {
                assert!(self.read.is_empty(), "the connection closed mid-frame");
                return None;
            }
        }
    }

    /// Every frame until the connection closes.
    async fn recv_all(&mut self) -> Vec<Frame> {
        let mut frames = Vec::new();
        while let Some(frame) = self.recv().await {
            frames.push(frame);
        }
        frames
    }
}

/// Runs a connection of `protocol` with `dispatcher` against `script`, which gets the client.
async fn run<D, F>(
    protocol: &Protocol,
    dispatcher: &D,
    script: impl FnOnce(Client) -> F,
) -> (Closed, CounterValues)
where
    D: Dispatcher,
    F: Future<Output = ()>,
{
    let counters = Counters::default();
    let (server, client) = tokio::io::duplex(1 << 16);
    let client = Client::new(client, protocol);
    let connection = pylon_frames::Connection::new(protocol, server, dispatcher, &counters).run();
    let (ended, ()) =
        tokio::time::timeout(BOUND, async { tokio::join!(connection, script(client)) })
            .await
            .expect("the test ran to its end");
    (ended.why, counters.read())
}

/// Yields until `condition` holds, a bounded number of times.
async fn until(condition: impl Fn() -> bool) {
    for _ in 0..10_000 {
        if condition() {
            return;
        }
        tokio::task::yield_now().await;
    }
    panic!("the condition never held");
}

#[tokio::test(start_paused = true)]
async fn many_frames_in_one_read_are_each_answered_with_their_sequence() {
    let protocol = protocol(json!({}));
    let (closed, counters) = run(&protocol, &Echo, |mut client| async move {
        let frames: Vec<Frame> = (0..10).map(|i| frame(SEND, 100 + i, "hello")).collect();
        client.send(&frames).await;
        let mut answers = Vec::new();
        for _ in 0..10 {
            answers.push(client.recv().await.unwrap());
        }
        answers.sort_by_key(|answer| answer.sequence);
        for (i, answer) in answers.iter().enumerate() {
            assert_eq!(answer.sequence, 100 + i as u64);
            assert_eq!(answer.command, SEND | ANSWER);
            assert_eq!(&answer.body[..], b"hello");
        }
        client.io.shutdown().await.unwrap();
        assert_eq!(client.recv().await, None);
    })
    .await;
    assert!(matches!(closed, Closed::ClientClosed), "{closed}");
    assert_eq!((counters.frames_in, counters.frames_out), (10, 10));
}

#[tokio::test(start_paused = true)]
async fn the_bytes_each_way_are_counted() {
    let protocol = protocol(json!({}));
    let counters = Counters::default();
    let (server, client) = tokio::io::duplex(1 << 16);
    let mut client = Client::new(client, &protocol);
    let connection = pylon_frames::Connection::new(&protocol, server, &Echo, &counters).run();
    let script = async {
        client
            .send(&[frame(SEND, 1, "hello"), frame(SEND, 2, "")])
            .await;
        client.recv().await.unwrap();
        client.recv().await.unwrap();
        client.io.shutdown().await.unwrap();
        assert_eq!(client.recv().await, None);
    };
    let (ended, ()) = tokio::time::timeout(BOUND, async { tokio::join!(connection, script) })
        .await
        .unwrap();
    let mut sent = BytesMut::new();
    for f in [frame(SEND, 1, "hello"), frame(SEND, 2, "")] {
        protocol.layout().encode(&f, &mut sent).unwrap();
    }
    // Echo answers each frame with its body under the answer command: the same sizes.
    assert!(matches!(ended.why, Closed::ClientClosed), "{}", ended.why);
    assert_eq!(
        (ended.received, ended.sent),
        (sent.len() as u64, sent.len() as u64)
    );
}

#[tokio::test(start_paused = true)]
async fn a_frame_arriving_a_byte_at_a_time_is_answered() {
    let protocol = protocol(json!({}));
    let mut bytes = BytesMut::new();
    protocol
        .layout()
        .encode(&frame(PING, 7, "ping"), &mut bytes)
        .unwrap();
    let (closed, _) = run(&protocol, &Echo, |mut client| async move {
        for byte in bytes.iter() {
            client.send_bytes(&[*byte]).await;
            tokio::task::yield_now().await;
        }
        let answer = client.recv().await.unwrap();
        assert_eq!(
            (answer.command, answer.sequence, &answer.body[..]),
            (PING | ANSWER, 7, &b"ping"[..])
        );
        client.io.shutdown().await.unwrap();
        assert_eq!(client.recv().await, None);
    })
    .await;
    assert!(matches!(closed, Closed::ClientClosed), "{closed}");
}

/// A bad frame after a good one: the good one is answered, the bad one gets the error frame
/// (with its sequence id when its header was read) or nothing, and the connection closes.
async fn bad_frame(
    changes: Value,
    bytes: &[u8],
    then_close: bool,
    expected_error_frame: Option<u64>,
) -> (Closed, CounterValues) {
    let protocol = protocol(changes);
    let bytes = bytes.to_vec();
    let version = protocol.layout().field("version").unwrap();
    let (closed, counters) = run(&protocol, &Echo, |mut client| async move {
        client.send(&[frame(PING, 1, "first")]).await;
        client.send_bytes(&bytes).await;
        if then_close {
            client.io.shutdown().await.unwrap();
        }
        let frames = client.recv_all().await;
        let answer = frames.iter().find(|f| f.command == PING | ANSWER).unwrap();
        assert_eq!(answer.sequence, 1);
        let errors: Vec<&Frame> = frames.iter().filter(|f| f.command == ON_ERROR).collect();
        match expected_error_frame {
            Some(sequence) => {
                assert_eq!(errors.len(), 1, "{frames:?}");
                assert_eq!(errors[0].sequence, sequence);
                assert_eq!(errors[0].fields.get(version), 1);
                assert!(errors[0].body.is_empty());
            }
            None => assert!(errors.is_empty(), "{frames:?}"),
        }
        assert_eq!(frames.len(), 1 + errors.len(), "{frames:?}");
    })
    .await;
    assert_eq!(counters.frames_in, 1);
    (closed, counters)
}

/// A HelloTalk frame's bytes, with `edit` applied.
fn hellotalk_bytes(sequence: u64, body: &'static str, edit: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut bytes = BytesMut::new();
    protocol(json!({}))
        .layout()
        .encode(&frame(SEND, sequence, body), &mut bytes)
        .unwrap();
    let mut bytes = bytes.to_vec();
    edit(&mut bytes);
    bytes
}

#[tokio::test(start_paused = true)]
async fn a_frame_without_its_start_marker_gets_the_error_frame_and_a_close() {
    let (closed, counters) = bad_frame(json!({}), b"GET / HTTP/1.1\r\n\r\n", false, Some(0)).await;
    assert!(
        matches!(closed, Closed::BadFrame(FrameError::MissingStart)),
        "{closed}"
    );
    assert_eq!(counters.missing_start, 1);
    assert_eq!(counters.frames_out, 2);
}

#[tokio::test(start_paused = true)]
async fn a_frame_with_a_wrong_end_marker_gets_the_error_frame_with_its_sequence() {
    let bytes = hellotalk_bytes(42, "body", |b| *b.last_mut().unwrap() = 0x0b);
    let (closed, counters) = bad_frame(json!({}), &bytes, false, Some(42)).await;
    assert!(
        matches!(closed, Closed::BadFrame(FrameError::BadEnd)),
        "{closed}"
    );
    assert_eq!(counters.bad_end, 1);
}

#[tokio::test(start_paused = true)]
async fn a_body_over_max_body_is_refused_from_its_header() {
    // Only the header is sent: the length alone is refused.
    let bytes = hellotalk_bytes(43, "", |b| {
        b[1..5].copy_from_slice(&2048u32.to_be_bytes());
        b.truncate(21);
    });
    let (closed, counters) = bad_frame(json!({"max_body": 1024}), &bytes, false, Some(43)).await;
    assert!(
        matches!(
            closed,
            Closed::BadFrame(FrameError::TooLong {
                length: 2048,
                max: 1024
            })
        ),
        "{closed}"
    );
    assert_eq!(
        closed.to_string(),
        "a body of 2048 bytes, over max_body 1024"
    );
    assert_eq!(counters.too_long, 1);
}

#[tokio::test(start_paused = true)]
async fn a_length_below_what_it_counts_is_a_bad_frame() {
    let changes = json!({"layout": {"length_includes": "frame"}});
    let layout = protocol(changes.clone()).layout().clone();
    let mut bytes = BytesMut::new();
    layout.encode(&frame(SEND, 44, "x"), &mut bytes).unwrap();
    bytes[1..5].copy_from_slice(&5u32.to_be_bytes());
    let (closed, counters) = bad_frame(changes, &bytes, false, Some(44)).await;
    assert!(
        matches!(
            closed,
            Closed::BadFrame(FrameError::BadLength {
                length: 5,
                counted: 22
            })
        ),
        "{closed}"
    );
    assert_eq!(counters.bad_length, 1);
}

#[tokio::test(start_paused = true)]
async fn a_frame_cut_by_the_end_of_the_stream_is_a_bad_frame() {
    let bytes = hellotalk_bytes(45, "a body", |b| b.truncate(25));
    let (closed, counters) = bad_frame(json!({}), &bytes, true, Some(45)).await;
    assert!(
        matches!(
            closed,
            Closed::BadFrame(FrameError::Truncated { received: 25 })
        ),
        "{closed}"
    );
    assert_eq!(counters.truncated, 1);

    // Before its header is whole, the sequence is not known.
    let bytes = hellotalk_bytes(46, "a body", |b| b.truncate(5));
    let (closed, _) = bad_frame(json!({}), &bytes, true, Some(0)).await;
    assert!(
        matches!(
            closed,
            Closed::BadFrame(FrameError::Truncated { received: 5 })
        ),
        "{closed}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_client_silent_mid_frame_times_out_with_the_error_frame() {
    let bytes = hellotalk_bytes(47, "a body", |b| b.truncate(25));
    let (closed, counters) = bad_frame(json!({"read_timeout": 5}), &bytes, false, Some(47)).await;
    assert!(matches!(closed, Closed::FrameTimeout), "{closed}");
    assert_eq!(counters.timeouts, 1);
}

#[tokio::test(start_paused = true)]
async fn with_on_error_close_a_bad_frame_only_closes() {
    let bytes = hellotalk_bytes(48, "body", |b| *b.last_mut().unwrap() = 0);
    let (closed, counters) = bad_frame(
        json!({"on_error": {"action": "close"}}),
        &bytes,
        false,
        None,
    )
    .await;
    assert!(
        matches!(closed, Closed::BadFrame(FrameError::BadEnd)),
        "{closed}"
    );
    assert_eq!((counters.bad_end, counters.frames_out), (1, 1));

    let bytes = hellotalk_bytes(49, "a body", |b| b.truncate(25));
    let changes = json!({"on_error": {"action": "close"}, "read_timeout": 5});
    let (closed, counters) = bad_frame(changes, &bytes, false, None).await;
    assert!(matches!(closed, Closed::FrameTimeout), "{closed}");
    assert_eq!(counters.timeouts, 1);
}

#[tokio::test(start_paused = true)]
async fn an_unknown_command_gets_its_error_frame_and_the_connection_goes_on() {
    let protocol = protocol(json!({}));
    let (closed, counters) = run(&protocol, &Echo, |mut client| async move {
        client.send(&[frame(UNROUTED, 5, "?")]).await;
        let error = client.recv().await.unwrap();
        assert_eq!((error.command, error.sequence), (ON_UNKNOWN, 5));
        client.send(&[frame(PING, 6, "still here")]).await;
        assert_eq!(client.recv().await.unwrap().sequence, 6);
        client.io.shutdown().await.unwrap();
        assert_eq!(client.recv().await, None);
    })
    .await;
    assert!(matches!(closed, Closed::ClientClosed), "{closed}");
    assert_eq!(
        (
            counters.frames_in,
            counters.unknown_commands,
            counters.frames_out
        ),
        (2, 1, 2)
    );
}

#[tokio::test(start_paused = true)]
async fn an_unknown_command_closes_when_so_configured() {
    let protocol = protocol(json!({"unknown_command": {"action": "close"}}));
    let (closed, counters) = run(&protocol, &Echo, |mut client| async move {
        client.send(&[frame(UNROUTED, 5, "?")]).await;
        assert_eq!(client.recv().await, None);
    })
    .await;
    assert!(
        matches!(closed, Closed::UnknownCommand(UNROUTED)),
        "{closed}"
    );
    assert_eq!(counters.unknown_commands, 1);
}

#[tokio::test(start_paused = true)]
async fn a_hundred_calls_in_flight_are_answered_in_completion_order() {
    let protocol = protocol(json!({"max_in_flight": 100}));
    let gated = &Gated::default();
    let (closed, counters) = run(&protocol, gated, |mut client| async move {
        let frames: Vec<Frame> = (0..100).map(|i| frame(SEND, i, "call")).collect();
        client.send(&frames).await;
        until(|| gated.started.get() == 100).await;
        // 37 and 100 are coprime: every call, in an order far from the requests'.
        for sequence in (0..100).map(|i| i * 37 % 100) {
            gated.release(sequence);
            let answer = client.recv().await.unwrap();
            assert_eq!(answer.sequence, sequence);
            assert_eq!(answer.body, sequence.to_string());
        }
        client.io.shutdown().await.unwrap();
        assert_eq!(client.recv().await, None);
    })
    .await;
    assert!(matches!(closed, Closed::ClientClosed), "{closed}");
    assert_eq!((counters.frames_in, counters.frames_out), (100, 100));
}

#[tokio::test(start_paused = true)]
async fn past_max_in_flight_a_frame_waits_until_a_call_finishes() {
    let protocol = protocol(json!({"max_in_flight": 100}));
    let gated = &Gated::default();
    let (closed, _) = run(&protocol, gated, |mut client| async move {
        let frames: Vec<Frame> = (0..101).map(|i| frame(SEND, i, "call")).collect();
        client.send(&frames).await;
        until(|| gated.started.get() == 100).await;
        // Virtual time: this returns once every task is idle.
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(gated.started.get(), 100, "the 101st was dispatched");
        assert!(!gated.waiting.borrow().contains_key(&100));

        gated.release(0);
        assert_eq!(client.recv().await.unwrap().sequence, 0);
        until(|| gated.started.get() == 101).await;
        for sequence in 1..=100 {
            gated.release(sequence);
            assert_eq!(client.recv().await.unwrap().sequence, sequence);
        }
        client.io.shutdown().await.unwrap();
        assert_eq!(client.recv().await, None);
    })
    .await;
    assert!(matches!(closed, Closed::ClientClosed), "{closed}");
}

#[tokio::test(start_paused = true)]
async fn pushed_frames_are_written_whole_between_answers() {
    let protocol = protocol(json!({}));
    let counters = Counters::default();
    let (server, client) = tokio::io::duplex(1 << 16);
    let client = Client::new(client, &protocol);
    let (push, pushes) = mpsc::channel(8);
    let connection =
        pylon_frames::Connection::new(&protocol, server, &Echo, &counters).pushes(pushes);
    let big = Bytes::from(vec![b'p'; 200_000]);
    let (reader, writer) = tokio::io::split(client.io);
    let (mut receiver, mut sender) = (
        Client::new(reader, &protocol),
        Client::new(writer, &protocol),
    );
    let script = async {
        // With nothing from the client, a push goes out at once.
        push.send(Frame {
            command: 7,
            sequence: 1,
            ..Frame::default()
        })
        .await
        .unwrap();
        assert_eq!(receiver.recv().await.unwrap().command, 7);

        let send = async {
            for round in 0..20u64 {
                let calls: Vec<Frame> = (0..5)
                    .map(|i| frame(PING, round * 5 + i, "answer me"))
                    .collect();
                sender.send(&calls).await;
                let body = if round % 4 == 0 {
                    big.clone()
                } else {
                    Bytes::from(round.to_string())
                };
                push.send(Frame {
                    command: 7,
                    sequence: 1000 + round,
                    body,
                    ..Frame::default()
                })
                .await
                .unwrap();
            }
        };
        let receive = async {
            let mut answers = Vec::new();
            let mut pushed = Vec::new();
            while answers.len() < 100 || pushed.len() < 20 {
                let frame = receiver.recv().await.unwrap();
                match frame.command {
                    7 => pushed.push(frame),
                    _ => answers.push(frame),
                }
            }
            (answers, pushed)
        };
        let ((), (answers, pushed)) = tokio::join!(send, receive);
        let mut sequences: Vec<u64> = answers.iter().map(|a| a.sequence).collect();
        sequences.sort_unstable();
        assert_eq!(sequences, (0..100).collect::<Vec<u64>>());
        assert!(answers.iter().all(|a| a.body == "answer me"));
        // Pushes keep their order and their sequence ids.
        for (round, frame) in pushed.iter().enumerate() {
            assert_eq!(frame.sequence, 1000 + round as u64);
            let expected = if round % 4 == 0 {
                big.len()
            } else {
                round.to_string().len()
            };
            assert_eq!(frame.body.len(), expected);
        }
        sender.io.shutdown().await.unwrap();
        assert_eq!(receiver.recv().await, None);
    };
    let (closed, ()) =
        tokio::time::timeout(BOUND, async { tokio::join!(connection.run(), script) })
            .await
            .unwrap();
    let closed = closed.why;
    assert!(matches!(closed, Closed::ClientClosed), "{closed}");
    assert_eq!(counters.read().frames_out, 121);
}

#[tokio::test(start_paused = true)]
async fn a_stop_finishes_the_calls_in_flight_and_reads_nothing_more() {
    let protocol = protocol(json!({}));
    let gated = Gated::default();
    let counters = Counters::default();
    let (server, client) = tokio::io::duplex(1 << 16);
    let mut client = Client::new(client, &protocol);
    let (stop, stopped) = oneshot::channel::<()>();
    let connection =
        pylon_frames::Connection::new(&protocol, server, &gated, &counters).stop_on(async {
            stopped.await.ok();
        });
    let script = async {
        client
            .send(&[
                frame(SEND, 1, "a"),
                frame(SEND, 2, "b"),
                frame(SEND, 3, "c"),
            ])
            .await;
        until(|| gated.started.get() == 3).await;
        stop.send(()).unwrap();
        client.send(&[frame(SEND, 4, "too late")]).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        for sequence in [3, 1, 2] {
            gated.release(sequence);
        }
        let answers: Vec<u64> = client.recv_all().await.iter().map(|a| a.sequence).collect();
        assert_eq!(answers, [3, 1, 2]);
        assert_eq!(gated.started.get(), 3, "a frame was read after the stop");
    };
    let (closed, ()) =
        tokio::time::timeout(BOUND, async { tokio::join!(connection.run(), script) })
            .await
            .unwrap();
    let closed = closed.why;
    assert!(matches!(closed, Closed::Stopped), "{closed}");
    assert_eq!(counters.read().abandoned, 0);
}

#[tokio::test(start_paused = true)]
async fn calls_still_running_when_the_grace_period_ends_are_abandoned() {
    let protocol = protocol(json!({}));
    let gated = Gated::default();
    let counters = Counters::default();
    let (server, client) = tokio::io::duplex(1 << 16);
    let mut client = Client::new(client, &protocol);
    let connection = pylon_frames::Connection::new(&protocol, server, &gated, &counters)
        .stop_on(tokio::time::sleep(Duration::from_secs(1)))
        .grace(Duration::from_secs(5));
    let script = async {
        client.send(&[frame(SEND, 1, "never answered")]).await;
        assert_eq!(client.recv().await, None);
    };
    let (closed, ()) =
        tokio::time::timeout(BOUND, async { tokio::join!(connection.run(), script) })
            .await
            .unwrap();
    let closed = closed.why;
    assert!(matches!(closed, Closed::Stopped), "{closed}");
    assert_eq!(counters.read().abandoned, 1);
}

#[tokio::test(start_paused = true)]
async fn a_client_waiting_for_an_answer_is_not_silent_but_an_idle_one_times_out() {
    let protocol = protocol(json!({"read_timeout": 10}));
    let gated = &Gated::default();
    let (closed, counters) = run(&protocol, gated, |mut client| async move {
        client.send(&[frame(SEND, 1, "slow")]).await;
        until(|| gated.started.get() == 1).await;
        tokio::time::sleep(Duration::from_secs(60)).await;
        gated.release(1);
        assert_eq!(client.recv().await.unwrap().sequence, 1);
        // Now idle: closed after read_timeout, without an error frame.
        assert_eq!(client.recv().await, None);
    })
    .await;
    assert!(matches!(closed, Closed::IdleTimeout), "{closed}");
    assert_eq!(counters.timeouts, 1);
    assert_eq!(counters.frames_out, 1);
}

#[tokio::test(start_paused = true)]
async fn a_failed_call_gets_the_error_frame_and_the_connection_goes_on() {
    let protocol = protocol(json!({}));
    let (closed, counters) = run(&protocol, &Echo, |mut client| async move {
        client.send(&[frame(SEND, 1, "fail")]).await;
        assert_eq!(
            client.recv().await.map(|f| (f.command, f.sequence)),
            Some((ON_ERROR, 1))
        );
        client.send(&[frame(SEND, 2, "wide")]).await;
        assert_eq!(
            client.recv().await.map(|f| (f.command, f.sequence)),
            Some((ON_ERROR, 2))
        );
        client.send(&[frame(SEND, 3, "fine")]).await;
        assert_eq!(
            client.recv().await.map(|f| (f.command, f.sequence)),
            Some((SEND | ANSWER, 3))
        );
        client.io.shutdown().await.unwrap();
        assert_eq!(client.recv().await, None);
    })
    .await;
    assert!(matches!(closed, Closed::ClientClosed), "{closed}");
    assert_eq!(counters.dispatch_errors, 2);
}

#[tokio::test(start_paused = true)]
async fn a_failed_call_closes_with_on_error_close_and_a_refusal_always_closes() {
    let protocol_closing = protocol(json!({"on_error": {"action": "close"}}));
    let (closed, counters) = run(&protocol_closing, &Echo, |mut client| async move {
        client.send(&[frame(SEND, 1, "fail")]).await;
        assert_eq!(client.recv().await, None);
    })
    .await;
    assert!(
        matches!(&closed, Closed::DispatchFailed(reason) if reason == "the upstream answered 502"),
        "{closed}"
    );
    assert_eq!(counters.dispatch_errors, 1);

    let protocol = protocol(json!({}));
    let (closed, _) = run(&protocol, &Echo, |mut client| async move {
        client.send(&[frame(SEND, 1, "close")]).await;
        assert_eq!(client.recv().await, None);
    })
    .await;
    assert!(
        matches!(&closed, Closed::Refused(reason) if reason == "credentials refused"),
        "{closed}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_client_that_does_not_read_its_answers_times_out() {
    let protocol = protocol(json!({"read_timeout": 10}));
    let body: &'static str = Box::leak("x".repeat(50_000).into_boxed_str());
    let all_answers = protocol.layout().frame_len(body.len()) * 4;
    let (closed, counters) = run(&protocol, &Echo, |mut client| async move {
        // Four answers of 50 kB: more than the stream and the write buffer hold.
        let frames: Vec<Frame> = (0..4).map(|i| frame(SEND, i, body)).collect();
        client.send(&frames).await;
        tokio::time::sleep(Duration::from_secs(60)).await;
        // What was written before the timeout is there to read, then the close.
        let mut received = Vec::new();
        client.io.read_to_end(&mut received).await.unwrap();
        assert!(received.len() < all_answers, "{} bytes", received.len());
    })
    .await;
    assert!(matches!(closed, Closed::IdleTimeout), "{closed}");
    assert_eq!(counters.timeouts, 1);
}
