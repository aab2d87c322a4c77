//! One event stream for a whole cluster.
