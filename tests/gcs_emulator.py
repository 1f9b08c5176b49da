"""`python -m tests.gcs_emulator PORT BUCKET`: gcp-storage-emulator in memory, with one bucket,
until stdin closes (the test fixture holds the pipe, so the server never outlives the tests).

One gap of the emulator is filled here: its object downloads carry no `x-goog-generation`
header, which real GCS always sends and tensorstore (orbax's OCDBT checkpoints) needs to
revalidate what it has read ("Malformed StorageGeneration" otherwise). The header is added from
the object's own metadata; nothing else of the emulator is changed.
"""

from __future__ import annotations

import sys


def _add_generation_header() -> None:
    from gcp_storage_emulator.handlers import objects

    download = objects.download

    def download_with_generation(request, response, storage, *args, **kwargs):
        download(request, response, storage, *args, **kwargs)
        try:
            obj = storage.get_file_obj(request.params["bucket_name"],
                                       request.params["object_id"])
        except Exception:  # noqa: BLE001  (not found: the 404 is already set)
            return
        response["x-goog-generation"] = str(obj["generation"])
        response["x-goog-metageneration"] = str(obj.get("metageneration", "1"))

    objects.download = download_with_generation  # before server.py builds its routes


def main(port: int, bucket: str) -> None:
    _add_generation_header()
    from gcp_storage_emulator.server import create_server

    server = create_server("127.0.0.1", port, in_memory=True, default_bucket=bucket)
    server.start()
    try:
        sys.stdin.read()
    finally:
        server.stop()


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2])
