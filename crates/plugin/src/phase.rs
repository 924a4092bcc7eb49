//! The phases of a request's life that plugins hook into, and sets of them.

/// One phase. See [`crate::Plugin`] for when each runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Rewrite,
    Access,
    BeforeProxy,
    /// The start of the request's body, before any of it goes upstream.
    RequestBody,
    /// A copy of the request's body as it goes upstream.
    RequestTap,
    HeaderFilter,
    BodyFilter,
    Log,
    /// The exchange with the upstream, made by a plugin in another protocol than the
    /// client's (see [`crate::Transcoder`]).
    Transcode,
    /// A request the gateway serves itself with a frames route: a WebSocket upgrade it
    /// answers (see [`crate::FramesBridge`]), or a push (see [`crate::FramesPush`]).
    Bridge,
}

/// The phases that run before the upstream exchange and may answer the request themselves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestPhase {
    Rewrite,
    Access,
    BeforeProxy,
}

impl RequestPhase {
    /// In the order they run.
    pub const ALL: [RequestPhase; 3] = [
        RequestPhase::Rewrite,
        RequestPhase::Access,
        RequestPhase::BeforeProxy,
    ];
}

impl From<RequestPhase> for Phase {
    fn from(phase: RequestPhase) -> Phase {
        match phase {
            RequestPhase::Rewrite => Phase::Rewrite,
            RequestPhase::Access => Phase::Access,
            RequestPhase::BeforeProxy => Phase::BeforeProxy,
        }
    }
}

/// A set of phases, as one bit each: a chain keeps the union of its plugins' sets and tests
/// one bit to skip a phase nobody uses.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Phases(u16);

impl Phases {
    pub const NONE: Phases = Phases(0);
    pub const REWRITE: Phases = Phases::of(Phase::Rewrite);
    pub const ACCESS: Phases = Phases::of(Phase::Access);
    pub const BEFORE_PROXY: Phases = Phases::of(Phase::BeforeProxy);
    pub const REQUEST_BODY: Phases = Phases::of(Phase::RequestBody);
    pub const REQUEST_TAP: Phases = Phases::of(Phase::RequestTap);
    pub const HEADER_FILTER: Phases = Phases::of(Phase::HeaderFilter);
    pub const BODY_FILTER: Phases = Phases::of(Phase::BodyFilter);
    pub const LOG: Phases = Phases::of(Phase::Log);
    pub const TRANSCODE: Phases = Phases::of(Phase::Transcode);
    pub const BRIDGE: Phases = Phases::of(Phase::Bridge);

    pub const fn of(phase: Phase) -> Phases {
        Phases(1 << phase as u16)
    }

    pub const fn with(self, other: Phases) -> Phases {
        Phases(self.0 | other.0)
    }

    pub const fn has(self, phase: Phase) -> bool {
        self.0 & (1 << phase as u16) != 0
    }

    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }
}

impl std::ops::BitOr for Phases {
    type Output = Phases;
    fn bitor(self, other: Phases) -> Phases {
        self.with(other)
    }
}

impl std::ops::BitOrAssign for Phases {
    fn bitor_assign(&mut self, other: Phases) {
        *self = self.with(other);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_set_has_exactly_its_phases() {
        let set = Phases::REWRITE | Phases::LOG;
        assert!(set.has(Phase::Rewrite) && set.has(Phase::Log));
        assert!(!set.has(Phase::Access) && !set.has(Phase::HeaderFilter));
        assert!(Phases::NONE.is_empty() && !set.is_empty());
    }
}
