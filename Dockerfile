# Stoa on Debian 12. Build: docker build -t stoa .
# Run:   docker run -p 8080:8080 -v stoa-data:/var/lib/stoa stoa
FROM debian:12 AS build
RUN apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      gcc make cmake pkg-config libmicrohttpd-dev libwebsockets-dev libev-dev libjson-c-dev libjwt-dev \
      libinih-dev uthash-dev libpq-dev zlib1g-dev libssl-dev && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY CMakeLists.txt ./
COPY cmake cmake
COPY sql sql
COPY include include
COPY src src
RUN cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo -DSTOA_TESTS=OFF && cmake --build build -j"$(nproc)"

FROM debian:12-slim
RUN apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      libmicrohttpd12 libwebsockets17 libwebsockets-evlib-ev libev4 libjson-c5 libjwt0 libinih1 libpq5 zlib1g libssl3 && rm -rf /var/lib/apt/lists/* \
    && useradd --system --home /var/lib/stoa --create-home stoa
COPY --from=build /src/build/stoa /usr/local/bin/stoa
COPY www /usr/share/stoa/www
USER stoa
WORKDIR /var/lib/stoa
ENV STOA_LISTEN=0.0.0.0:8080 STOA_DATA_DIR=/var/lib/stoa STOA_WWW_DIR=/usr/share/stoa/www
EXPOSE 8080
ENTRYPOINT ["stoa"]
CMD ["serve"]
