# tenantflow agent image. Build: docker build -t <registry>/tenantflow:<version> .
# (docs/deploy-aks.md: building and pushing to ACR).

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
RUN cargo build --release --locked -p tenantflow \
    && install -D -m 0755 target/release/tenantflow /out/tenantflow

# --- runtime: glibc and libgcc only; no shell, no package manager, no network tools.
FROM gcr.io/distroless/cc-debian12
COPY --from=build /out/tenantflow /usr/local/bin/tenantflow
# Root inside the container, but the DaemonSet drops every capability except CAP_BPF,
# CAP_NET_ADMIN and CAP_PERFMON (deploy/helm/tenantflow/templates/daemonset.yaml).
USER 0
ENTRYPOINT ["/usr/local/bin/tenantflow"]
CMD ["agent"]
