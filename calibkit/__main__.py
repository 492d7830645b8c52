from calibkit.cli.main import main

main()
