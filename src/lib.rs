//! Root package: owns the end-to-end tests and benches.
