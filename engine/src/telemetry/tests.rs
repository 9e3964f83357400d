//! Unit tests of the telemetry module.
