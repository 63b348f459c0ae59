"""The local stack: real Kafka, Redis, PostgreSQL, an S3 server and MLflow as local processes."""
