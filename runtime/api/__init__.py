"""The local inference API (Open Inference Protocol REST) served by the device agent."""
