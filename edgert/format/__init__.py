"""What the compiler and the device agree on: the artifact (reader and writer), the model
description, device targets, tensor names and weight formats. Imports numpy only."""
