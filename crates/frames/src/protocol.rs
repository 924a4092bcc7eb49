//! A framed-protocol stream route's configuration compiled: its layout, its commands and the
//! frames its errors get, built once when the configuration changes.

use std::time::Duration;

use bytes::BytesMut;
use serde_json::Value;

use pylon_model::FieldError;

use crate::config::{CommandRoute, ErrorAction, FramesConfig};
use crate::layout::{Frame, Layout};

/// What a connection speaking frames needs to know, from a [`FramesConfig`].
#[derive(Debug)]
pub struct Protocol {
    layout: Layout,
    /// By command id, for a binary search: faster than hashing for the few commands a route has.
    commands: Box<[(u64, CommandRoute)]>,
    /// `None`: close the connection.
    on_error: Option<ErrorFrame>,
    unknown_command: Option<ErrorFrame>,
    max_in_flight: usize,
    read_timeout: Duration,
}

/// An error frame, encoded once with sequence 0; each use writes the sequence it answers.
#[derive(Debug)]
pub(crate) struct ErrorFrame(Box<[u8]>);

impl ErrorFrame {
    /// The frame `action` writes, if any, in `layout`, which `action` was validated against.
    fn new(
        layout: &Layout,
        action: &ErrorAction,
        path: &str,
    ) -> Result<Option<Self>, Vec<FieldError>> {
        let ErrorAction::ErrorFrame { command, fields } = action else {
            return Ok(None);
        };
        let mut frame = Frame {
            command: *command,
            ..Frame::default()
        };
        for (name, &value) in fields {
            if let Some(id) = layout.field(name) {
                frame.fields.set(id, value);
            }
        }
        let mut bytes = BytesMut::new();
        // Validation checked that every value fits: this error is not expected.
        layout
            .encode(&frame, &mut bytes)
            .map_err(|e| vec![FieldError::new(path, e.to_string())])?;
        Ok(Some(Self(bytes.to_vec().into_boxed_slice())))
    }

    pub(crate) fn bytes(&self) -> &[u8] {
        &self.0
    }
}

impl Protocol {
    /// Parses, validates and compiles `protocol.conf`; errors have paths relative to it.
    pub fn from_json(conf: &Value) -> Result<Self, Vec<FieldError>> {
        Self::new(&FramesConfig::from_json(conf).map_err(|e| vec![e])?)
    }

    /// Validates and compiles `config`.
    pub fn new(config: &FramesConfig) -> Result<Self, Vec<FieldError>> {
        let errors = config.validate();
        if !errors.is_empty() {
            return Err(errors);
        }
        let layout = Layout::from_valid(&config.layout, config.max_body);
        let on_error = ErrorFrame::new(&layout, &config.on_error, "on_error")?;
        let unknown_command = ErrorFrame::new(&layout, &config.unknown_command, "unknown_command")?;
        // Valid: every key is a command id, each written once.
        let mut commands: Vec<(u64, CommandRoute)> = (config.commands.iter())
            .filter_map(|(id, route)| Some((id.parse().ok()?, route.clone())))
            .collect();
        commands.sort_unstable_by_key(|(id, _)| *id);
        Ok(Self {
            layout,
            commands: commands.into_boxed_slice(),
            on_error,
            unknown_command,
            max_in_flight: config.max_in_flight as usize,
            read_timeout: Duration::from_secs(config.read_timeout),
        })
    }

    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// The HTTP request frames of `command` become.
    pub fn route(&self, command: u64) -> Option<&CommandRoute> {
        let index = (self.commands)
            .binary_search_by_key(&command, |(id, _)| *id)
            .ok()?;
        Some(&self.commands[index].1)
    }

    /// The commands, by id.
    pub fn commands(&self) -> impl Iterator<Item = (u64, &CommandRoute)> {
        self.commands.iter().map(|(id, route)| (*id, route))
    }

    pub fn max_in_flight(&self) -> usize {
        self.max_in_flight
    }

    pub fn read_timeout(&self) -> Duration {
        self.read_timeout
    }

    /// The frame a failed call (or a bad frame) gets, answering `sequence`; `None` when the
    /// connection closes instead.
    pub fn on_error_frame(&self, sequence: u64) -> Option<BytesMut> {
        Some(self.with_sequence(self.on_error.as_ref()?, sequence))
    }

    /// The frame an unknown command gets, answering `sequence`; `None` when the connection
    /// closes instead.
    pub fn unknown_command_frame(&self, sequence: u64) -> Option<BytesMut> {
        Some(self.with_sequence(self.unknown_command.as_ref()?, sequence))
    }

    fn with_sequence(&self, error: &ErrorFrame, sequence: u64) -> BytesMut {
        let mut frame = BytesMut::from(error.bytes());
        self.layout.set_sequence(&mut frame, sequence);
        frame
    }

    pub(crate) fn on_error(&self) -> Option<&ErrorFrame> {
        self.on_error.as_ref()
    }

    pub(crate) fn unknown_command(&self) -> Option<&ErrorFrame> {
        self.unknown_command.as_ref()
    }
}
