//! CNI spec types and the runtime-side invoker (what libcni does for containerd).
