# Portcullis container image: built in a Rust image, run on distroless as a
# non-root user. Build: docker build -t portcullis .
# Run:   docker run -p 8080:8080 -v portcullis-data:/var/lib/portcullis \
#          -v $PWD/gateway.toml:/etc/portcullis/gateway.toml:ro portcullis
# In gateway.toml: listen = "0.0.0.0:8080", data_dir = "/var/lib/portcullis",
# admin_listen = "127.0.0.1:9100" (reach it with docker exec, or publish it
# only on a private network).

FROM rust:1-slim-bookworm AS build
# Pingora's zlib-ng needs cmake and a C compiler.
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake gcc g++ libc6-dev make \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY benches ./benches
COPY tests ./tests
RUN cargo build --profile dist --locked --bin portcullis \
 && install -D -m 0755 target/dist/portcullis /out/portcullis \
 && install -d -m 0700 /out/data

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/portcullis /usr/local/bin/portcullis
# The data dir (sled db, generated keys, admin token), owned by nonroot.
COPY --from=build --chown=65532:65532 /out/data /var/lib/portcullis
VOLUME ["/var/lib/portcullis"]
USER 65532:65532
EXPOSE 8080 8443
ENV PORTCULLIS_CONFIG=/etc/portcullis/gateway.toml
ENTRYPOINT ["/usr/local/bin/portcullis"]
CMD ["serve"]
