//! Events for tests.

use super::{Event, EventType, Events};

pub(crate) fn events() -> Events {
    Events::disabled("mail/edge".into(), "edge-0".into())
}

pub(crate) fn event(kind: EventType) -> Event {
    events().event(kind, super::record::event_id("Q", None, kind, 0, ""))
}
