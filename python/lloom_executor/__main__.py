from lloom_executor.cli import main

main()
