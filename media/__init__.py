"""Media: frames to bytes and back, used by the server, the CLI and the evaluator alike.

    media/fmp4.py     fragmented MP4 for live viewers: one fragment a frame (LiveEncoder)
    media/mp4.py      whole MP4 files: write (Mp4Writer, write_mp4) and read (read_frames)
    media/images.py   PNG thumbnails and spritesheets
"""
