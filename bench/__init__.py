"""The babel-actors bench: load, latency and cost, from the listener's side.

Run it from the repository's root with the project's venv::

    python -m bench fanout --listeners 100,1000,2000 --out fanout.json
    python -m bench fanout --engines cloud --listeners 1000,2000 --out fanout-cloud.json
    python -m bench overhead --out overhead.json
    python -m bench sessions --hosts 100 --out sessions.json
    python -m bench e2e --out e2e.json
    python -m bench ingest --out ingest.json
    python -m bench plot fanout.json sessions.json --out bench.png

``fanout --engines cloud`` runs the server on the production engines (Google speech,
OpenAI translation) against the project's local emulators and splits each final's
time between the STT result, the translation request and the listeners.

Each scenario starts its own server (``babel-actors serve --port 0 ...``) or aims at
running ones (``--url``), generates load in separate processes (raw non-blocking
sockets, thousands per process), and writes a JSON report and a one-screen summary.
"""
