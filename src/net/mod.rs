//! Sockets: listeners, relay sockets, the port pool, workers.
