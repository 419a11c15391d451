//! api (being built)
