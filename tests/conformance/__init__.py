"""`make conformance`: llama.cpp's own server tests, run against llama-router and llama-server."""
