from calibkit.cli.entry import main

main()
