# Tries to delete a file and a directory outside its run directory (created by
# the test, which replaces __TARGET_FILE__ and __TARGET_DIR__), and its HOME.
import os
import shutil

shutil.rmtree(os.path.expanduser("~"), ignore_errors=True)
os.remove("__TARGET_FILE__")
shutil.rmtree("__TARGET_DIR__")
