"""Names shared by the code that writes a file and the code that reads it back, kept below both.

The data modules write the input description into every checkpoint and :mod:`lficam.loading` reads it, so
the key lives here: the data package never imports the deployment loader, nor the loader the data package.
"""

#: Key of the data module's input description (image size, mean, std, class names) inside a Lightning
#: checkpoint (see ``ClassificationDataModule.state_dict``).
INPUT_KEY = "lficam_input"
