//! Bridges: a route whose requests the gateway serves itself with a framed-protocol stream
//! route instead of proxying them: its WebSocket clients, each message a call of the stream
//! route (`websocket-frames`), pushes to the stream route's connected clients
//! (`frames-push`), or the push API of a push gateway's devices (`device-push`).

use std::sync::Arc;

/// What a route's WebSocket clients are bridged to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FramesBridge {
    /// The stream route (`protocol: pylon-frames`) whose layout and commands the messages use.
    pub stream_route_id: Arc<str>,
    pub mode: BridgeMode,
}

/// What a WebSocket message carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BridgeMode {
    /// A binary message is one frame in the stream route's layout; so is its answer.
    Binary,
    /// A text message is a JSON call (`command`, `sequence`, `fields`, `body`); so is its
    /// answer.
    Json,
    /// A binary message is one frame, relayed to the stream route's upstream (a framed TCP
    /// backend); each frame the backend sends comes back as one binary message.
    Tcp,
}

/// A route whose requests push a frame to a client of a frames route, found by the key its
/// connection is bound to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FramesPush {
    /// The stream route (`protocol: pylon-frames`) whose clients the frames go to.
    pub stream_route_id: Arc<str>,
}

/// A route whose requests are the push API of a push gateway: messages to its devices, and
/// the counts of those messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DevicePush {
    /// The stream route (`protocol: pylon-push`) whose devices the messages go to.
    pub stream_route_id: Arc<str>,
}
