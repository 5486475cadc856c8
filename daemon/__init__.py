"""The live-stack daemon: ZeroMQ ingest, publishing, control, persistence and sources."""
