# tenantflow agent image, one file for both ways of building it (docs/deploy-aks.md):
#   docker build -t <registry>/tenantflow:<version> .          (compiles in the build stage)
#   cargo xtask image                                           (offline: a prebuilt binary on
#     a runtime base assembled from Debian packages, --target prebuilt)
# The runtime base defaults to distroless; the offline path passes its local equivalent
# (same glibc 2.36) with --build-arg RUNTIME_BASE=localhost/tenantflow-runtime-base:bookworm.
ARG RUNTIME_BASE=gcr.io/distroless/cc-debian12

# --- build: stable for the agent, nightly + rust-src + bpf-linker (LLVM 22) for the eBPF
# object, exactly as `cargo xtask setup` prepares a developer machine.
FROM rust:1-bookworm AS build
ARG BPF_LINKER_VERSION=0.13.0
RUN rustup toolchain install nightly --profile minimal --component rust-src
# bpf-linker must link the same LLVM major as nightly rustc: use nightly's own libLLVM.
RUN set -eux; \
    sysroot="$(rustc +nightly --print sysroot)"; \
    lib="$(ls "$sysroot/lib" | grep -E '^libLLVM(\.so\.|-)' | head -n1)"; \
    mkdir -p /opt/llvm/lib; \
    ln -s "$sysroot/lib/$lib" /opt/llvm/lib/libLLVM.so; \
    ln -s "$sysroot/lib/$lib" "/opt/llvm/lib/$lib"; \
    LLVM_PREFIX=/opt/llvm cargo +nightly install "bpf-linker@${BPF_LINKER_VERSION}" --locked \
        --no-default-features --features llvm-22
WORKDIR /src
COPY . .
RUN cargo build --profile image --locked -p tenantflow \
    && install -D -m 0755 target/image/tenantflow /out/tenantflow

# --- prebuilt: the runtime with a binary `cargo build --profile image` made outside.
FROM ${RUNTIME_BASE} AS prebuilt
COPY target/image/tenantflow /usr/local/bin/tenantflow
# Root inside the container, but the DaemonSet drops every capability except CAP_BPF,
# CAP_NET_ADMIN and CAP_PERFMON (deploy/helm/tenantflow/templates/daemonset.yaml).
USER 0
ENTRYPOINT ["/usr/local/bin/tenantflow"]
CMD ["agent"]

# --- runtime (default): glibc and libgcc only; no shell, no package manager, no network tools.
FROM ${RUNTIME_BASE}
COPY --from=build /out/tenantflow /usr/local/bin/tenantflow
USER 0
ENTRYPOINT ["/usr/local/bin/tenantflow"]
CMD ["agent"]
