#!/bin/sh
# One-shot MinIO setup, run by the `minio-init` service (image minio/mc) after
# MinIO is healthy. Every step is safe to repeat on each `docker compose up`.
#   - bucket $LAKE_BUCKET
#   - lifecycle rules from lifecycle.json (raw/ 90 days, processed/ 730 days);
#     the import replaces the bucket's whole lifecycle configuration
#   - application user $S3_ACCESS_KEY_ID limited to that bucket (app-policy.json)
set -eu

: "${MINIO_ROOT_USER:?}" "${MINIO_ROOT_PASSWORD:?}"
: "${S3_ACCESS_KEY_ID:?}" "${S3_SECRET_ACCESS_KEY:?}"
BUCKET="${LAKE_BUCKET:-vitalstream-lake}"
HERE=/etc/vitalstream/minio

mc alias set vs http://minio:9000 "$MINIO_ROOT_USER" "$MINIO_ROOT_PASSWORD" >/dev/null

mc mb --ignore-existing "vs/$BUCKET"
mc anonymous set none "vs/$BUCKET"

mc ilm rule import "vs/$BUCKET" < "$HERE/lifecycle.json"
mc ilm rule ls "vs/$BUCKET"

if [ "$S3_ACCESS_KEY_ID" != "$MINIO_ROOT_USER" ]; then
  mc admin policy create vs vitalstream-lake-rw "$HERE/app-policy.json"
  mc admin user add vs "$S3_ACCESS_KEY_ID" "$S3_SECRET_ACCESS_KEY"
  if ! mc admin user info vs "$S3_ACCESS_KEY_ID" | grep -q vitalstream-lake-rw; then
    mc admin policy attach vs vitalstream-lake-rw --user "$S3_ACCESS_KEY_ID"
  fi
fi
echo "minio-init: bucket $BUCKET ready"
