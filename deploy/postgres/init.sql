-- Runs once, on the first start of an empty postgres-data volume
-- (docker-entrypoint-initdb.d), as the POSTGRES_USER superuser.
-- Idempotent: a database is created only when it does not exist yet.

-- vitalstream: predictions and audit trail (VITALSTREAM_POSTGRES_DB).
SELECT 'CREATE DATABASE vitalstream'
WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = 'vitalstream')\gexec

-- mlflow: MLflow tracking / model registry backend store (VITALSTREAM_POSTGRES_MLFLOW_DB).
SELECT 'CREATE DATABASE mlflow'
WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = 'mlflow')\gexec
