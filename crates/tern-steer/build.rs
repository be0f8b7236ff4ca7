//! Builds `bpf/steer.bpf.c` into `$OUT_DIR/steer.bpf.o`, or leaves `tern_steer_built` unset and
//! says why (see `tern-bpf-build`).

fn main() {
    tern_bpf_build::build(&tern_bpf_build::Program {
        source: "bpf/steer.bpf.c",
        object: "steer.bpf.o",
        cfg: "tern_steer_built",
        not_built_env: "TERN_STEER_NOT_BUILT",
        what: "steering",
    });
}
