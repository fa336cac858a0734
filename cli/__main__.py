from prunereg.cli import app

app()
