"""Video nuisance features from the container and stream headers (PyAV; no frame is decoded)."""
from __future__ import annotations


def features(path) -> dict:
    import av
    with av.open(str(path)) as c:
        st = c.streams.video[0]
        rate = st.average_rate or st.guessed_rate
        duration = c.duration / 1e6 if c.duration else (float(st.duration * st.time_base) if st.duration else float("nan"))
        cc = st.codec_context
        return {"codec": str(cc.name), "frame_rate": float(rate) if rate else float("nan"),
                "width": float(cc.width), "height": float(cc.height), "aspect_ratio": cc.width / max(cc.height, 1),
                "duration": duration, "bitrate": float(c.bit_rate or st.bit_rate or float("nan")),
                "frame_count": float(st.frames) if st.frames else float("nan"),
                "audio_track": float(bool(c.streams.audio))}
