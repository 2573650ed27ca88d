"""vv-worker: VibeVoice text-to-speech as a RunPod Serverless worker, in-process with transformers."""

__version__ = "0.1.0"
