//! Builds `bpf/relay.bpf.c` into `$OUT_DIR/relay.bpf.o`, or leaves `tern_xdp_built` unset and
//! says why (see `tern-bpf-build`).

fn main() {
    tern_bpf_build::build(&tern_bpf_build::Program {
        source: "bpf/relay.bpf.c",
        object: "relay.bpf.o",
        cfg: "tern_xdp_built",
        not_built_env: "TERN_XDP_NOT_BUILT",
        what: "fast path",
    });
}
