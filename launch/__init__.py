"""Where a run happens: this machine (the demo) today; clusters and clouds later."""
