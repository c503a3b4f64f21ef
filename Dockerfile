# tenantflow agent image, one file for both ways of building it (docs/deploy-aks.md):
#   docker build -t <registry>/tenantflow:<version> .          (compiles in the build stage)
#   cargo xtask image                                           (offline: a prebuilt binary on
#     a runtime base assembled from Debian packages, --target prebuilt)
# The runtime base defaults to distroless; the offline path passes its local equivalent
# (same glibc 2.36) with --build-arg RUNTIME_BASE=localhost/tenantflow-runtime-base:bookworm.
ARG RUNTIME_BASE=gcr.io/distroless/cc-debian12

# --- build: the pinned stable for the agent (rust-toolchain.toml), and the pinned nightly +
# rust-src + bpf-linker for the eBPF object (toolchains.env), exactly as `cargo xtask
# setup` prepares a developer machine and CI. Base images are pinned by exact version tag;
# add their digests (`docker buildx imagetools inspect <image>`) where your registry
# policy requires it (docs/deploy-aks.md, section 1).
FROM rust:1.95.0-bookworm AS build
COPY toolchains.env /toolchains.env
RUN set -eux; . /toolchains.env; \
    rustup toolchain install "$BPF_NIGHTLY" --profile minimal --component rust-src
# bpf-linker must link the same LLVM major as the nightly's rustc: use its own libLLVM.
RUN set -eux; . /toolchains.env; \
    sysroot="$(rustc +"$BPF_NIGHTLY" --print sysroot)"; \
    lib="$(ls "$sysroot/lib" | grep -E '^libLLVM(\.so\.|-)' | head -n1)"; \
    mkdir -p /opt/llvm/lib; \
    ln -s "$sysroot/lib/$lib" /opt/llvm/lib/libLLVM.so; \
    ln -s "$sysroot/lib/$lib" "/opt/llvm/lib/$lib"; \
    LLVM_PREFIX=/opt/llvm cargo +"$BPF_NIGHTLY" install "bpf-linker@${BPF_LINKER_VERSION}" --locked \
        --no-default-features --features "llvm-${BPF_LLVM_MAJOR}"
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
