# placeholder: filled by the stage's owner (issue 8/10)
