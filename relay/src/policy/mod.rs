//! Blocklist lookups (being written).
