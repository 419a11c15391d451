//! telemetry (being built)
