# docker/e2e.sh only: a local stand-in for the official nginx image (which this CI cannot pull), built on the
# same Debian base as the service image. It reads docker/nginx-lb.conf from /etc/nginx/conf.d like the official
# image does.
ARG BASE_IMAGE
FROM ${BASE_IMAGE}
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends nginx-light wget \
    && rm -rf /var/lib/apt/lists/* /etc/nginx/sites-enabled/* \
    && ln -sf /dev/stdout /var/log/nginx/access.log \
    && ln -sf /dev/stderr /var/log/nginx/error.log
CMD ["nginx", "-g", "daemon off;"]
