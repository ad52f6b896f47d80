"""Reliability: crashes, full disks, hostile peers, fuzzing, load."""
