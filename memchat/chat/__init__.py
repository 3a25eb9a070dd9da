"""The interactive side of memchat: the REPL, its slash commands, and the pieces the command line shares
with it (reading times, progress bars, streaming a reply to the terminal)."""
