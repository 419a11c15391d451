//! stomp (being built)
